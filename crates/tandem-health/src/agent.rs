//! The agent check (HAProxy's agent-check protocol): a small program on each backend,
//! reached on `agent.port` of the backend's address, answers one line such as `up`,
//! `drain`, `maint`, `down`, `ready`, `stopped` or a weight percentage (`75%`), words
//! separated by commas or blanks, optionally followed by `#` and a message, then
//! closes. [`parse`] reads that answer (pure); [`ask`] does the IO of one ask; the
//! [`crate::Monitor`]'s one scheduler runs the asks as it runs the checks and records
//! each answer in the backend's
//! `tandem_balance::BackendState`, where the pool acts on it.
//!
//! Unlike HAProxy, where a word leaves the states it does not name as they were, each
//! answer is the agent's whole view: what it does not say returns to ready, up and
//! 100%. An agent that answers `drain`, then `up`, drains, then takes connections.

use std::net::SocketAddr;
use std::time::Duration;

use tandem_balance::Agent;
use tandem_config::AgentCheck;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Most bytes of an agent's answer that are read.
pub const MAX_AGENT_ANSWER: usize = 1024;

/// What one answer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentAnswer {
    /// The states the answer sets.
    pub agent: Agent,
    /// The text after `#`, when any.
    pub message: Option<String>,
    /// Words that tandem does not act on (`maxconn:30`, unknown ones).
    pub ignored: Vec<String>,
}

/// Reads an agent's answer. `None` when it says nothing (empty, or only blanks).
pub fn parse(answer: &str) -> Option<AgentAnswer> {
    let line = answer.lines().next().unwrap_or_default();
    let (words, message) = match line.split_once('#') {
        Some((w, m)) => (w, Some(m.trim().to_string()).filter(|m| !m.is_empty())),
        None => (line, None),
    };
    let mut agent = Agent::READY;
    let mut ignored = Vec::new();
    let mut said = false;
    for word in words
        .split(|c: char| c == ',' || c.is_ascii_whitespace())
        .filter(|w| !w.is_empty())
    {
        said = true;
        match word.to_ascii_lowercase().as_str() {
            "up" => agent.down = false,
            "down" | "stopped" | "fail" => agent.down = true,
            "ready" => {
                agent.drain = false;
                agent.maint = false;
            }
            "drain" => agent.drain = true,
            "maint" => agent.maint = true,
            w => match w.strip_suffix('%').map(str::parse::<u32>) {
                Some(Ok(pct)) if pct <= 1000 => agent.weight_pct = pct,
                _ => ignored.push(word.to_string()),
            },
        }
    }
    said.then_some(AgentAnswer {
        agent,
        message,
        ignored,
    })
}

/// Asks the agent of the backend at `backend` once (on `check.port` of its address):
/// connects, sends `check.send`, reads the answer until the agent closes or a line
/// ends, all within `check.timeout`.
pub async fn ask(check: &AgentCheck, backend: SocketAddr) -> Result<String, String> {
    let target = SocketAddr::new(backend.ip(), check.port);
    let exchange = async {
        let mut tcp = TcpStream::connect(target)
            .await
            .map_err(|e| format!("agent {target}: connect: {e}"))?;
        if let Some(send) = &check.send {
            tcp.write_all(send.as_bytes())
                .await
                .map_err(|e| format!("agent {target}: send: {e}"))?;
        }
        let mut answer = Vec::new();
        let mut buf = [0u8; 256];
        while answer.len() < MAX_AGENT_ANSWER && !answer.contains(&b'\n') {
            let n = tcp
                .read(&mut buf)
                .await
                .map_err(|e| format!("agent {target}: read: {e}"))?;
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
        Ok(String::from_utf8_lossy(&answer).into_owned())
    };
    match tokio::time::timeout(check.timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "agent {target}: no answer within {}",
            crate::fmt_duration(check.timeout)
        )),
    }
}

/// How long to wait before the first ask of the `i`-th of `n` backends: the asks of a
/// pool spread over the interval.
pub(crate) fn phase(interval: Duration, i: usize, n: usize) -> Duration {
    interval * i as u32 / n.max(1) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn said(text: &str) -> Agent {
        parse(text)
            .unwrap_or_else(|| panic!("{text:?} says nothing"))
            .agent
    }

    #[test]
    fn each_word_sets_its_state() {
        assert_eq!(said("up\n"), Agent::READY);
        assert_eq!(said("ready"), Agent::READY);
        assert!(said("down").down);
        assert!(said("stopped").down);
        assert!(said("DRAIN\r\n").drain);
        assert!(said("maint").maint);
        assert_eq!(said("75%").weight_pct, 75);
        assert_eq!(said("0%").weight_pct, 0);
        assert!(
            !said("0%").allows_new(),
            "weight 0 takes no new connections"
        );
        assert!(!said("drain").down, "drain: healthy, no new connections");
    }

    #[test]
    fn words_combine_with_commas_and_blanks() {
        let a = said("drain, 50%");
        assert!(a.drain && a.weight_pct == 50 && !a.down);
        let a = said("up 75%\tready");
        assert_eq!(
            a,
            Agent {
                weight_pct: 75,
                ..Agent::READY
            }
        );
        let a = said("maint,down");
        assert!(a.maint && a.down);
        // A later word overrides an earlier one of the same state.
        assert!(!said("drain ready").drain);
        assert!(!said("down,up").down);
    }

    #[test]
    fn a_message_and_unknown_words_are_kept_aside() {
        let a = parse("down # disk full\n").unwrap();
        assert!(a.agent.down);
        assert_eq!(a.message.as_deref(), Some("disk full"));
        let a = parse("50% maxconn:30 sleepy").unwrap();
        assert_eq!(a.agent.weight_pct, 50);
        assert_eq!(a.ignored, vec!["maxconn:30", "sleepy"]);
        assert_eq!(parse("2000%").unwrap().ignored, vec!["2000%"]);
        assert_eq!(parse("x%").unwrap().ignored, vec!["x%"]);
    }

    #[test]
    fn an_answer_without_words_says_nothing() {
        assert_eq!(parse(""), None);
        assert_eq!(parse(" \r\n"), None);
        assert_eq!(parse("# only a message"), None);
    }

    #[test]
    fn only_the_first_line_counts() {
        assert_eq!(said("50%\ndrain\n").weight_pct, 50);
        assert!(!said("50%\ndrain\n").drain);
    }

    #[test]
    fn asks_spread_over_the_interval() {
        let i = Duration::from_secs(2);
        assert_eq!(phase(i, 0, 4), Duration::ZERO);
        assert_eq!(phase(i, 2, 4), Duration::from_secs(1));
        assert_eq!(phase(i, 0, 0), Duration::ZERO);
    }
}
