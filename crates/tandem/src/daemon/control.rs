//! Answers to the control socket's requests.

use tandem_control::{BackendAction, Reply, Request, Response};
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
