//! The way to a shield POP: rendezvous (highest-random-weight) hashing of an object's key over
//! the shield's live edges, and the HTTP client that asks them.
//!
//! Rendezvous hashing gives every edge of every POP the same order for an object without any
//! coordination beyond the member list: each member's score is a hash of (member, key), and
//! the members are tried by falling score. Removing a member moves only the objects it was
//! first for (they go to their second choice); adding one takes about 1/n of the objects,
//! from every other member alike. The hash is FNV-1a with the SplitMix64 finaliser: fixed
//! here, so that every edge release orders alike (std's hashers promise no stability).
//!
//! A shield edge that cannot be reached is skipped for [`EJECT_FOR`] by this edge (its
//! objects go to their next choice meanwhile), so a dead shield edge that the control plane
//! still lists costs one failed connect, not one per miss.

use super::UpstreamBody;
use super::UpstreamRequest;
use crate::error::ProxyError;
use firebreak_protocol::tier::{TierSecret, TIER_CREDENTIAL_S, TIER_HEADER};
use http::{HeaderValue, Method, Request, Response, Uri, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// Most shield edges one miss tries before it goes to the origin itself.
pub const MAX_SHIELD_ATTEMPTS: usize = 2;
/// How long an unreachable shield edge is skipped.
pub const EJECT_FOR: Duration = Duration::from_secs(5);
/// Time allowed to connect to a shield edge.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle pooled connections kept per shield edge.
const MAX_IDLE_PER_EDGE: usize = 64;
/// Most ejected edges remembered (beyond, the oldest entries are forgotten first).
const MAX_EJECTED: usize = 1024;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(seed, |h, b| (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME))
}

/// SplitMix64's finaliser: spreads FNV's low-entropy output over all 64 bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The hash of an object's key (service, host, path and query), computed once per miss.
pub fn key_hash(service: &str, host: &str, path_and_query: &str) -> u64 {
    let h = fnv1a(FNV_OFFSET, service.as_bytes());
    let h = fnv1a(h, b"\n");
    let h = fnv1a(h, host.as_bytes());
    let h = fnv1a(h, b"\n");
    fnv1a(h, path_and_query.as_bytes())
}

/// A member's score for an object: its rank in the object's order.
fn score(member: &SocketAddr, key: u64) -> u64 {
    let m = fnv1a(FNV_OFFSET, member.to_string().as_bytes());
    mix(m ^ mix(key))
}

/// The members in the object's order: highest score first (ties by address, so the order is
/// total).
pub fn rendezvous_order(members: &[SocketAddr], key: u64) -> Vec<SocketAddr> {
    let mut scored: Vec<(u64, SocketAddr)> = members.iter().map(|m| (score(m, key), *m)).collect();
    scored.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.into_iter().map(|(_, m)| m).collect()
}

/// How an exchange with a shield edge failed.
#[derive(Debug)]
pub enum ShieldFailure {
    /// No connection (nothing sent).
    Connect(String),
    /// No response head in time.
    Timeout,
    /// Reset or malformed answer.
    Bad(String),
}

impl std::fmt::Display for ShieldFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "connect: {e}"),
            Self::Timeout => f.write_str("no answer in time"),
            Self::Bad(e) => write!(f, "bad answer: {e}"),
        }
    }
}

/// The client of one edge process towards shield edges (pooled HTTP/1.1 keep-alive), and
/// which shield edges it skips for now.
pub struct ShieldClient {
    client: Client<HttpConnector, UpstreamBody>,
    ejected: Mutex<HashMap<SocketAddr, Instant>>,
}

impl Default for ShieldClient {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(MAX_IDLE_PER_EDGE)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Self {
            client,
            ejected: Mutex::new(HashMap::new()),
        }
    }
}

impl ShieldClient {
    /// The edges to try for an object, best first: its rendezvous order without the edges
    /// skipped for now, up to (not including) `own` — an edge of the shield POP asks the
    /// origin itself from the point where it is the object's best choice — at most
    /// [`MAX_SHIELD_ATTEMPTS`]. (None: the miss goes to the origin at once.)
    pub fn attempts(
        &self,
        members: &[SocketAddr],
        own: &[SocketAddr],
        key: u64,
    ) -> Vec<SocketAddr> {
        let order = rendezvous_order(members, key);
        let now = Instant::now();
        let ejected = self.ejected.lock().unwrap_or_else(PoisonError::into_inner);
        order
            .into_iter()
            .filter(|m| ejected.get(m).is_none_or(|until| *until <= now))
            .take_while(|m| !own.contains(m))
            .take(MAX_SHIELD_ATTEMPTS)
            .collect()
    }

    /// Skips `edge` for [`EJECT_FOR`].
    pub fn eject(&self, edge: SocketAddr) {
        let now = Instant::now();
        let mut ejected = self.ejected.lock().unwrap_or_else(PoisonError::into_inner);
        ejected.retain(|_, until| *until > now);
        if ejected.len() < MAX_EJECTED {
            ejected.insert(edge, now + EJECT_FOR);
        }
    }

    /// Asks one shield edge for `req` (a GET without body), signed with `secret`, waiting at
    /// most `head_timeout` for the response head.
    pub async fn send(
        &self,
        edge: SocketAddr,
        req: &UpstreamRequest,
        authority: &str,
        secret: &TierSecret,
        head_timeout: Duration,
    ) -> Result<Response<Incoming>, ShieldFailure> {
        let request =
            build(edge, req, authority, secret).map_err(|e| ShieldFailure::Bad(e.to_string()))?;
        match tokio::time::timeout(head_timeout, self.client.request(request)).await {
            Err(_) => Err(ShieldFailure::Timeout),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) if e.is_connect() => Err(ShieldFailure::Connect(e.to_string())),
            Ok(Err(e)) => Err(ShieldFailure::Bad(
                std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| e.to_string()),
            )),
        }
    }
}

/// The request to a shield edge: the origin request, its `Host` the normalised authority
/// (the shield routes by it; a pool's `host_header` is for the origin only), framed by us,
/// with the tier credential.
fn build(
    edge: SocketAddr,
    req: &UpstreamRequest,
    authority: &str,
    secret: &TierSecret,
) -> Result<Request<UpstreamBody>, ProxyError> {
    let uri = Uri::builder()
        .scheme("http")
        .authority(edge.to_string())
        .path_and_query(req.path_and_query.clone())
        .build()
        .map_err(|_| ProxyError::BadRequest("request target"))?;
    let mut request = Request::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
    *request.method_mut() = Method::GET;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    let mut headers = req.headers.clone();
    for name in [
        http::header::CONTENT_LENGTH,
        http::header::TRANSFER_ENCODING,
        http::header::EXPECT,
        http::header::HOST,
    ] {
        headers.remove(name);
    }
    let expires = firebreak_protocol::tier::now_s().saturating_add(TIER_CREDENTIAL_S);
    let credential = secret.sign("GET", authority, req.path_and_query.as_str(), expires);
    let credential =
        HeaderValue::from_str(&credential).map_err(|_| ProxyError::BadRequest("credential"))?;
    headers.insert(TIER_HEADER, credential);
    let host =
        HeaderValue::from_str(authority).map_err(|_| ProxyError::BadRequest("invalid host"))?;
    headers.insert(http::header::HOST, host);
    *request.headers_mut() = headers;
    Ok(request)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| {
                format!("10.0.{}.{}:8080", i / 250, i % 250 + 1)
                    .parse()
                    .unwrap()
            })
            .collect()
    }

    fn first(members: &[SocketAddr], key: u64) -> SocketAddr {
        rendezvous_order(members, key)[0]
    }

    fn keys(n: usize) -> Vec<u64> {
        (0..n)
            .map(|i| key_hash("svc", "example.com", &format!("/object/{i}")))
            .collect()
    }

    #[test]
    fn the_order_is_stable_and_total() {
        let m = members(5);
        let k = key_hash("svc", "example.com", "/a");
        // Pinned: every edge of every release must agree on this order.
        assert_eq!(k, key_hash("svc", "example.com", "/a"));
        assert_eq!(k, 0x83de_adf3_8b33_ed90, "{k:#x}");
        assert_eq!(rendezvous_order(&m, k)[0], m[2]);
        let order = rendezvous_order(&m, k);
        assert_eq!(order.len(), 5);
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, m, "every member once");
        // The input's order does not matter.
        let mut reversed = m.clone();
        reversed.reverse();
        assert_eq!(rendezvous_order(&reversed, k), order);
        // The key's fields are separated: moving a boundary is another key.
        assert_ne!(key_hash("a", "bc", "/"), key_hash("ab", "c", "/"));
    }

    #[test]
    fn objects_spread_evenly() {
        let m = members(5);
        let mut count: HashMap<SocketAddr, usize> = HashMap::new();
        let ks = keys(20_000);
        for k in &ks {
            *count.entry(first(&m, *k)).or_default() += 1;
        }
        assert_eq!(count.len(), 5);
        for (member, n) in count {
            // 4000 expected each; ±10% is far outside noise for a good hash.
            assert!((3600..=4400).contains(&n), "{member}: {n} of 20000");
        }
    }

    #[test]
    fn removing_or_adding_a_member_moves_only_its_share() {
        let m = members(5);
        let ks = keys(20_000);
        let before: Vec<SocketAddr> = ks.iter().map(|k| first(&m, *k)).collect();
        // One member gone: only its objects move, each to its second choice.
        let gone = m[2];
        let fewer: Vec<SocketAddr> = m.iter().copied().filter(|x| *x != gone).collect();
        for (k, b) in ks.iter().zip(&before) {
            let now = first(&fewer, *k);
            if *b == gone {
                assert_eq!(now, rendezvous_order(&m, *k)[1], "next in the old order");
            } else {
                assert_eq!(now, *b, "an object of a member that stayed moved");
            }
        }
        // One member added: it takes about 1/6 of the objects, and only objects move to it.
        let mut more = m.clone();
        more.push("10.9.9.9:8080".parse().unwrap());
        let mut moved = 0;
        for (k, b) in ks.iter().zip(&before) {
            let now = first(&more, *k);
            if now != *b {
                assert_eq!(now, more[5], "moved elsewhere than to the new member");
                moved += 1;
            }
        }
        assert!((3000..=3700).contains(&moved), "{moved} of 20000 moved");
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejected_edge_is_skipped_for_a_while() {
        let c = ShieldClient::default();
        let m = members(3);
        let k = key_hash("svc", "h", "/x");
        let order = rendezvous_order(&m, k);
        assert_eq!(c.attempts(&m, &[], k), order[..2].to_vec());
        c.eject(order[0]);
        assert_eq!(c.attempts(&m, &[], k), order[1..].to_vec());
        tokio::time::advance(EJECT_FOR + Duration::from_millis(1)).await;
        assert_eq!(c.attempts(&m, &[], k), order[..2].to_vec());
        // An edge of the shield POP stops at itself: the home asks the origin.
        assert!(c.attempts(&m, &[order[0]], k).is_empty());
        assert_eq!(c.attempts(&m, &[order[1]], k), vec![order[0]]);
        c.eject(order[0]);
        assert!(
            c.attempts(&m, &[order[1]], k).is_empty(),
            "the home is down: the next in order is the home now"
        );
    }
}
