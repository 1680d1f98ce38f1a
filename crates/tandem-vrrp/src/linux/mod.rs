//! Linux IO.
