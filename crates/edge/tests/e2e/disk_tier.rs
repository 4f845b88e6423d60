//! The disk tier end to end: an edge stops and a new one on the same directory serves what
//! the first stored as hits, byte for byte (small objects promoted to memory, large ones
//! streamed from their files, ranges of them too), and a purge answered before the stop is
//! not undone by it.

use crate::common::*;

/// A body whose every byte depends on its position and on `seed`.
fn body(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(131).wrapping_add(u32::from(seed)) as u8)
        .collect()
}

/// (path, size): one block, several blocks, and one above the promotion bound (streamed).
const OBJECTS: [(&str, usize); 4] = [
    ("/tiny", 10),
    ("/small", 1000),
    ("/blocks", 200_000),
    ("/large", 3 * 1024 * 1024 + 5),
];

fn seed_of(path: &str) -> u8 {
    path.len() as u8
}

const TOKEN: &str = "disk-tier-test-token";

fn disk_config(origin: std::net::SocketAddr, dir: &TempDir) -> String {
    with_disk(config(origin, ""), dir, TOKEN)
}

async fn origin() -> TestOrigin {
    TestOrigin::start(|r| {
        let path = r.uri.path().to_owned();
        let len = OBJECTS
            .iter()
            .find(|(p, _)| *p == path)
            .map_or(5, |(_, l)| *l);
        Reply::ok(body(seed_of(&path), len))
            .cc("max-age=3600")
            .header("etag", format!("\"{path}\""))
            .header("surrogate-key", "all")
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_edge_serves_what_its_disk_holds_as_hits() {
    let origin = origin().await;
    let dir = temp_dir("restart");
    let cfg = disk_config(origin.addr, &dir);
    {
        let edge = start_edge(&cfg).await;
        edge.disk_holds(0).await;
        for (path, len) in OBJECTS {
            let r = edge.get(path).await;
            assert_eq!(r.body.len(), len);
            edge.get_until_hit(path).await;
        }
        edge.disk_holds(OBJECTS.len() as u64).await;
        edge.handle.shutdown();
    }
    let fetched = origin.count();
    let edge = start_edge(&cfg).await;
    edge.disk_holds(OBJECTS.len() as u64).await;
    for (path, len) in OBJECTS {
        let r = edge.get(path).await;
        assert!(
            r.cache_status().contains("hit"),
            "{path}: {}",
            r.cache_status()
        );
        assert_eq!(r.body.len(), len, "{path}");
        assert!(
            r.body[..] == body(seed_of(path), len)[..],
            "{path}: bytes differ"
        );
        assert_eq!(r.header("etag"), Some(format!("\"{path}\"").as_str()));
    }
    // A range of the streamed object, from its file.
    let r = edge
        .get_with("/large", &[("range", "bytes=1000000-1200009")])
        .await;
    assert_eq!(r.status, 206);
    assert_eq!(
        &r.body[..],
        &body(seed_of("/large"), 3 * 1024 * 1024 + 5)[1_000_000..1_200_010]
    );
    let r = edge.get_with("/large", &[("range", "bytes=-7")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body.len(), 7);
    // Small ones were promoted to memory by the first read: hits without a disk read.
    let again = edge.get("/small").await;
    assert!(
        !again.cache_status().contains("disk"),
        "{}",
        again.cache_status()
    );
    assert_eq!(
        origin.count(),
        fetched,
        "nothing went to the origin after the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_answered_before_a_restart_stays_purged() {
    let origin = origin().await;
    let dir = temp_dir("purge");
    let cfg = disk_config(origin.addr, &dir);
    {
        let edge = start_edge(&cfg).await;
        for (path, _) in OBJECTS {
            edge.get(path).await;
            edge.get_until_hit(path).await;
        }
        edge.disk_holds(OBJECTS.len() as u64).await;
        let admin = edge.handle.admin_addr().unwrap();
        let status = admin_request(
            admin,
            "/purge/key?service=test&key=all",
            "disk-tier-test-token",
        )
        .await;
        assert_eq!(status, 200);
        let status = admin_request(
            admin,
            "/purge/url?url=http://localhost/tiny&soft=false",
            "disk-tier-test-token",
        )
        .await;
        assert_eq!(status, 200);
        // No time for anything else to happen: the purge's answer is the guarantee.
        edge.handle.shutdown();
    }
    let before = origin.count();
    let edge = start_edge(&cfg).await;
    edge.disk_holds(0).await;
    for (path, _) in OBJECTS {
        let r = edge.get(path).await;
        assert!(
            !r.cache_status().contains("hit"),
            "{path} came back after its purge: {}",
            r.cache_status()
        );
    }
    assert_eq!(origin.count(), before + OBJECTS.len());
}

/// Objects over the memory tier's bound go to disk as they arrive (never held whole in
/// memory), up to the disk tier's own bound; they are hits from disk, also after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_over_the_memory_bound_are_written_to_disk_as_they_arrive() {
    const BIG: usize = 5 * 1024 * 1024 + 3;
    const HUGE: usize = 9 * 1024 * 1024;
    let origin = TestOrigin::start(|r| {
        let (len, chunked) = match r.uri.path() {
            "/big" => (BIG, false),
            "/big-chunked" => (BIG, true),
            _ => (HUGE, false),
        };
        let reply = Reply::ok(body(7, len)).cc("max-age=3600");
        if chunked {
            // Streamed without a length: the size is known only at the end.
            let (tx, rx) = tokio::sync::mpsc::channel(64);
            tokio::spawn(async move {
                for c in body(7, len).chunks(100_000) {
                    if tx.send(Ok(bytes::Bytes::copy_from_slice(c))).await.is_err() {
                        return;
                    }
                }
            });
            return Reply::streamed(rx).cc("max-age=3600");
        }
        reply
    })
    .await;
    let dir = temp_dir("spool");
    let cfg = disk_config(origin.addr, &dir)
        .replace(
            "max_bytes = 67108864\nmax_object_bytes = 16777216",
            "max_bytes = 8388608\nmax_object_bytes = 1048576",
        )
        .replace(
            "max_bytes = 268435456\n",
            "max_bytes = 268435456\nmax_object_bytes = 8388608\n",
        );
    assert!(cfg.contains("max_object_bytes = 8388608"), "{cfg}");
    {
        let edge = start_edge(&cfg).await;
        edge.disk_holds(0).await;
        for path in ["/big", "/big-chunked"] {
            let first = edge.get(path).await;
            assert_eq!(first.body.len(), BIG);
            assert!(
                first.cache_status().contains("stored"),
                "{path}: {}",
                first.cache_status()
            );
            let hit = edge.get_until_hit(path).await;
            assert!(
                hit.cache_status().contains("detail=disk"),
                "{path}: {}",
                hit.cache_status()
            );
            assert!(hit.body[..] == body(7, BIG)[..], "{path}: bytes differ");
        }
        // Over the disk tier's bound: served, not stored.
        let huge = edge.get("/huge").await;
        assert_eq!(huge.body.len(), HUGE);
        let again = edge.get("/huge").await;
        assert!(
            !again.cache_status().contains("hit"),
            "{}",
            again.cache_status()
        );
        edge.disk_holds(2).await;
        let memory = edge.handle.state().store.stats();
        assert!(
            memory.bytes < 1024 * 1024,
            "large bodies are not in memory: {memory:?}"
        );
        edge.handle.shutdown();
    }
    let count = origin.count();
    let edge = start_edge(&cfg).await;
    edge.disk_holds(2).await;
    for path in ["/big", "/big-chunked"] {
        let r = edge.get(path).await;
        assert!(
            r.cache_status().contains("hit"),
            "{path}: {}",
            r.cache_status()
        );
        assert!(r.body[..] == body(7, BIG)[..], "{path}: bytes differ");
    }
    assert_eq!(origin.count(), count);
}
