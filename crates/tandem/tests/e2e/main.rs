//! tandem end to end: one test binary for the whole daemon, run by
//! `cargo nextest run -p tandem --test e2e`. Each module is one area (its tests show in
//! nextest as `e2e::AREA::test_name`; `-E 'test(/^AREA::/)'` runs one area); what they share
//! (the tandem process, backends, nginx, the namespace labs) is in `support`.

mod support;

mod acme;
mod announce;
mod cli;
mod conformance;
mod control;
mod ha;
mod ha_aa;
mod ha_v6;
mod health;
mod http;
mod matrix;
mod package;
mod redirect;
mod relay;
mod routes;
mod runtime;
mod site;
mod soak;
mod status_page;
mod sync;
mod upgrade;
mod workers;
