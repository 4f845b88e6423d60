//! The rest of RFC 9111, end to end: invalid `Age`, invalidation by any unsafe method,
//! lenient and invalid `Expires`, heuristic freshness by default.

use crate::common::*;

/// RFC 9111 §5.1 (`Age = delta-seconds`) and §1.2.2: an `Age` that is not a non-negative
/// integer is ignored; it neither makes the response unstorable nor stale.
#[tokio::test]
async fn invalid_age_is_ignored_and_the_response_still_hits() {
    let origin = TestOrigin::start(|r| {
        let age = match r.uri.path() {
            "/neg" => "-5",
            "/abc" => "abc",
            "/frac" => "1.5",
            _ => "10, 20",
        };
        Reply::ok("a").cc("max-age=600").header("age", age)
    })
    .await;
    let edge = edge_for(&origin).await;
    for (n, path) in ["/neg", "/abc", "/frac", "/two"].into_iter().enumerate() {
        let first = edge.get(path).await;
        assert!(first.cache_status().contains("stored"), "{path}: {}", first.cache_status());
        let hit = edge.get_until_hit(path).await;
        assert!(hit.ttl() > 500, "{path}: {}", hit.cache_status());
        assert_eq!(origin.count(), n + 1, "{path}");
    }
}
