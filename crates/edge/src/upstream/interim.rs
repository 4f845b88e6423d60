//! Interim (1xx) responses from the origin, such as `103 Early Hints` (RFC 9110 §15.2,
//! RFC 8297).
//!
//! hyper's client reads every 1xx before the final response and never returns one as the
//! response (a `101` it does return, as an upgrade: [`super::classify`] refuses it, as the edge
//! never asks for an upgrade). So a 1xx is never stored nor mistaken for the final answer, and
//! its fields never reach the stored object.
//!
//! Passing them on to the client is the listener's business: one whose protocol stack can send
//! a 1xx before the final response (HTTP/3, [`crate::http3`]) runs the request inside
//! [`forwarding`], and every origin request made by that request's task then registers a
//! [`hyper::ext::on_informational`] callback that queues the 1xx (hop-by-hop fields removed)
//! for it. Nothing else sees them: a background refresh runs in its own task, and a coalesced
//! waiter gets no hints of its leader's fetch. hyper's server (HTTP/1.1, h2) cannot send a 1xx,
//! so those listeners do not ask.

use crate::http::headers::strip_hop_by_hop;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{Request, Response, StatusCode};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Most interim responses passed on for one client request: a page has a few hints at most;
/// an origin sending more only makes the client parse more.
pub const MAX_FORWARDED: usize = 8;

tokio::task_local! {
    static FORWARD: InterimSender;
}

/// Where the interim responses of one client request's origin exchanges go.
#[derive(Clone)]
pub struct InterimSender {
    queue: mpsc::Sender<Response<()>>,
    /// Interim responses queued so far, across failover attempts.
    queued: Arc<AtomicUsize>,
}

/// The interim responses of one client request, in the order the origin sent them.
pub type InterimReceiver = mpsc::Receiver<Response<()>>;

/// A queue for at most [`MAX_FORWARDED`] interim responses.
pub fn channel() -> (InterimSender, InterimReceiver) {
    let (queue, rx) = mpsc::channel(MAX_FORWARDED);
    let sender = InterimSender {
        queue,
        queued: Arc::default(),
    };
    (sender, rx)
}

/// Runs `request` (the handling of one client request) with its origins' interim responses
/// queued to `sender`.
pub async fn forwarding<F: std::future::Future>(sender: InterimSender, request: F) -> F::Output {
    FORWARD.scope(sender, request).await
}

impl InterimSender {
    fn offer(&self, status: StatusCode, headers: &http::HeaderMap) {
        // `100 Continue` answers an `Expect` the edge never sends upstream: not the client's.
        if status == StatusCode::CONTINUE || !status.is_informational() {
            return;
        }
        // A 1xx has no content, so framing fields in one are malformed (RFC 9110 §8.6, RFC
        // 9112 §6.1): such a head is not passed on (the bytes after it decide the exchange).
        if headers.contains_key(CONTENT_LENGTH) || headers.contains_key(TRANSFER_ENCODING) {
            return;
        }
        if self.queued.fetch_add(1, Ordering::Relaxed) >= MAX_FORWARDED {
            return;
        }
        let mut headers = headers.clone();
        strip_hop_by_hop(&mut headers);
        let mut head = Response::new(());
        *head.status_mut() = status;
        *head.headers_mut() = headers;
        // Never blocks; full only if the client's side stopped taking them.
        let _ = self.queue.try_send(head);
    }
}

/// Has `request`'s interim responses queued for the client when the current task forwards
/// them; otherwise hyper skips them as before.
pub(super) fn watch<B>(request: &mut Request<B>) {
    let Ok(sender) = FORWARD.try_with(InterimSender::clone) else {
        return;
    };
    hyper::ext::on_informational(request, move |res| {
        sender.offer(res.status(), res.headers());
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::HeaderMap;

    #[tokio::test]
    async fn queues_1xx_but_100_or_framed_without_hop_by_hop_fields_and_bounded() {
        let (tx, mut rx) = channel();
        let mut h = HeaderMap::new();
        h.insert("link", "</a.css>; rel=preload".parse().unwrap());
        h.insert("connection", "x-private".parse().unwrap());
        h.insert("x-private", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        tx.offer(StatusCode::CONTINUE, &h);
        tx.offer(StatusCode::OK, &h);
        for framing in ["content-length", "transfer-encoding"] {
            let mut framed = h.clone();
            framed.insert(framing, "5".parse().unwrap());
            tx.offer(StatusCode::from_u16(103).unwrap(), &framed);
        }
        for _ in 0..MAX_FORWARDED + 5 {
            tx.offer(StatusCode::from_u16(103).unwrap(), &h);
        }
        drop(tx);
        let mut got = Vec::new();
        while let Some(r) = rx.recv().await {
            got.push(r);
        }
        assert_eq!(got.len(), MAX_FORWARDED);
        let first = &got[0];
        assert_eq!(first.status(), 103);
        let names: Vec<_> = first.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["link"]);
    }

    #[tokio::test]
    async fn outside_forwarding_nothing_is_registered() {
        let mut req = Request::new(());
        watch(&mut req);
        assert!(req.extensions().is_empty());
        let (tx, _rx) = channel();
        forwarding(tx, async {
            let mut req = Request::new(());
            watch(&mut req);
            assert!(!req.extensions().is_empty());
        })
        .await;
    }
}
