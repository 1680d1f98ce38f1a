//! Answers to the control socket's requests.

use tandem_control::{AnnounceAction, BackendAction, Reply, Request, Response};
use tracing::warn;

use super::Daemon;

impl Daemon {
    /// Answers one control request.
    pub async fn handle(&self, request: Request) -> Response {
        match request {
            Request::Status => Response::ok(Reply::Status(Box::new(self.snapshot()))),
            Request::Pools => Response::ok(Reply::Pools(Box::new(self.snapshot()))),
            Request::Ha => Response::ok(Reply::Ha(self.snapshot().ha)),
            Request::Redirect => Response::ok(Reply::Redirect(
                self.redirect_snapshot().await.map(Box::new),
            )),
            Request::Backend {
                action,
                pool,
                address,
            } => self.backend_request(action, &pool, &address),
            Request::Announce { action } => self.announce_request(action).await,
            Request::BackendWeight {
                pool,
                address,
                weight,
            } => answer(
                self.set_backend_weight(&pool, &address, weight)
                    .await
                    .map(Reply::BackendChange),
            ),
            Request::BackendAdd {
                pool,
                address,
                weight,
                backup,
                max_conns,
            } => answer(
                self.add_backend(&pool, &address, weight, backup, max_conns)
                    .await
                    .map(Reply::BackendChange),
            ),
            Request::BackendRemove { pool, address } => answer(
                self.remove_backend(&pool, &address)
                    .await
                    .map(Reply::BackendChange),
            ),
            Request::StickyShow { filter } => {
                answer(self.sticky_entries(&filter).map(Reply::Sticky))
            }
            Request::StickyClear { filter } => {
                answer(self.clear_sticky(&filter).map(Reply::StickyCleared))
            }
            Request::Connections { service } => {
                Response::ok(Reply::Connections(self.connections(service.as_deref())))
            }
            Request::ConnectionClose { id } => {
                answer(self.close_connection(id).map(Reply::ConnectionClosed))
            }
            Request::Monitor => Response::ok(Reply::Monitor(self.recent_events())),
            Request::HaDemote => answer(self.ha_maintenance(true).await.map(Reply::HaMaintenance)),
            Request::HaRestore => {
                answer(self.ha_maintenance(false).await.map(Reply::HaMaintenance))
            }
            Request::Reload => match self.reload().await {
                Ok(report) => Response::ok(Reply::Reload(report)),
                Err(e) => {
                    warn!("reload refused, the running configuration stays:\n{e}");
                    Response::error(format!(
                        "reload refused, the running configuration stays:\n{e}"
                    ))
                }
            },
            Request::Upgrade { binary } => match self.upgrade(binary.map(Into::into)).await {
                Ok(reply) => Response::ok(Reply::Upgrade(reply)),
                Err(e) => Response::error(e.to_string()),
            },
        }
    }

    /// Drains or enables a backend: `tandem ctl backend` and the status page.
    pub(super) fn backend_request(
        &self,
        action: BackendAction,
        pool: &str,
        address: &str,
    ) -> Response {
        match self.set_backend_enabled(pool, address, action == BackendAction::Enable) {
            Ok(b) => Response::ok(Reply::Backend(b)),
            Err(e) => Response::error(e.to_string()),
        }
    }
}

impl Daemon {
    /// `tandem ctl announce [withdraw|restore]`: the operator's drain of the node, and
    /// the state after it.
    async fn announce_request(&self, action: AnnounceAction) -> Response {
        let Some(part) = &self.shared.announce else {
            return match action {
                AnnounceAction::Status => Response::ok(Reply::Announce(None)),
                _ => Response::error("no [announce] section: this node announces nothing"),
            };
        };
        let snapshot = match action {
            AnnounceAction::Status => part.snapshot(),
            AnnounceAction::Withdraw => part.set_operator(self, true).await,
            AnnounceAction::Restore => part.set_operator(self, false).await,
        };
        Response::ok(Reply::Announce(Some(snapshot)))
    }
}

/// A reply, or the refusal's reason.
fn answer(result: Result<Reply, super::RuntimeError>) -> Response {
    match result {
        Ok(reply) => Response::ok(reply),
        Err(e) => Response::error(e.to_string()),
    }
}
