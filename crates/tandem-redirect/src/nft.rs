//! Talks to nftables through its JSON API (`nft -j -f -`, libnftables' own input
//! format) by way of the `nftables` crate: the rules stay data until the kernel gets
//! them, and each change is one transaction.

use std::path::PathBuf;
use std::process::Command;

use nftables::helper::{NftablesError, apply_ruleset_with_args};

use crate::rules::{self, Forward, TABLE};

/// nftables failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// `nft` refused the transaction or could not run.
    #[error("nft: {0}")]
    Apply(String),
}

impl From<NftablesError> for NftError {
    fn from(e: NftablesError) -> Self {
        match e {
            NftablesError::NftFailed { stderr, hint, .. } => NftError::Apply(format!(
                "{} ({hint})",
                stderr.trim().lines().next().unwrap_or("failed")
            )),
            other => NftError::Apply(other.to_string()),
        }
    }
}

/// The `nft` program tandem drives.
#[derive(Debug, Clone)]
pub struct Nft {
    program: PathBuf,
}

impl Default for Nft {
    fn default() -> Self {
        Nft {
            program: crate::conntrackd::locate(std::path::Path::new("nft")),
        }
    }
}

impl Nft {
    /// Replaces tandem's table with the rules of `forwards`, atomically. Blocking.
    pub fn apply(&self, forwards: &[Forward]) -> Result<(), NftError> {
        let ruleset = rules::ruleset(forwards);
        apply_ruleset_with_args(
            &ruleset,
            Some(&self.program),
            nftables::helper::DEFAULT_ARGS,
        )?;
        Ok(())
    }

    /// Removes tandem's table (nothing when there is none). Blocking.
    pub fn remove(&self) -> Result<(), NftError> {
        apply_ruleset_with_args(
            &rules::removal(),
            Some(&self.program),
            nftables::helper::DEFAULT_ARGS,
        )?;
        Ok(())
    }

    /// The table as `nft list` prints it, with counters. Blocking.
    pub fn list(&self) -> Result<String, NftError> {
        let out = Command::new(&self.program)
            .args(["list", "table", "inet", TABLE])
            .output()
            .map_err(|e| NftError::Apply(format!("cannot run {}: {e}", self.program.display())))?;
        if !out.status.success() {
            return Err(NftError::Apply(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Whether `nft` can be run here.
    pub fn available(&self) -> bool {
        Command::new(&self.program)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }
}
