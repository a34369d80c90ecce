//! The [`Archive`] contract: segments stored whole, listed in name order, read in ranges,
//! never overwritten.

use crate::fixtures::{ok, unique};
use chronicle_kernel::archive::{Archive, ByteRange};
use std::sync::Arc;

/// The [`Archive`] contract: segments stored whole, listed in name order under a prefix, read in
/// ranges, and never overwritten. Names are unique to the run, so a shared bucket will do.
pub async fn archive_contract<A: Archive>(archive: Arc<A>) {
    const CTX: &str = "Archive";
    let root = unique("contract");
    let a = format!("{root}/a/0001.seg");
    let b = format!("{root}/a/0002.seg");
    let c = format!("{root}/b/0001.seg");
    let bytes: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
    for name in [&b, &a, &c] {
        assert!(
            ok(archive.put_segment(name, bytes.clone()).await, CTX),
            "{CTX}: a new segment name is stored"
        );
    }
    assert_eq!(
        ok(archive.list_segments(&format!("{root}/a/")).await, CTX),
        vec![a.clone(), b.clone()],
        "{CTX}: list_segments gives the names under a prefix, in name order"
    );
    let all = ok(archive.list_segments(&format!("{root}/")).await, CTX);
    assert_eq!(
        all,
        vec![a.clone(), b.clone(), c.clone()],
        "{CTX}: every prefix is listed"
    );
    assert_eq!(
        ok(archive.read_segment(&a, ByteRange::All).await, CTX),
        bytes
    );
    assert_eq!(
        ok(
            archive
                .read_segment(
                    &a,
                    ByteRange::Span {
                        offset: 100,
                        len: 50
                    }
                )
                .await,
            CTX
        ),
        bytes[100..150].to_vec(),
        "{CTX}: a span reads those bytes"
    );
    assert_eq!(
        ok(archive.read_segment(&a, ByteRange::Suffix(20)).await, CTX),
        bytes[bytes.len() - 20..].to_vec(),
        "{CTX}: a suffix reads the last bytes"
    );
    assert!(
        archive
            .read_segment(
                &a,
                ByteRange::Span {
                    offset: 4990,
                    len: 50
                }
            )
            .await
            .is_err(),
        "{CTX}: reading past a segment's end is an error, not a short read"
    );
    assert!(
        archive
            .read_segment(&format!("{root}/missing.seg"), ByteRange::All)
            .await
            .is_err(),
        "{CTX}: reading a missing segment is an error"
    );
    // Never overwritten: a second put under a taken name leaves the first.
    assert!(
        !ok(archive.put_segment(&a, vec![1, 2, 3]).await, CTX),
        "{CTX}: a taken name is reported as taken"
    );
    assert_eq!(
        ok(archive.read_segment(&a, ByteRange::All).await, CTX),
        bytes,
        "{CTX}: a segment is never overwritten"
    );
    // Concurrent puts of one name: exactly one wins.
    let d = format!("{root}/a/0003.seg");
    let (x, y) = tokio::join!(
        archive.put_segment(&d, vec![1; 64]),
        archive.put_segment(&d, vec![2; 64])
    );
    let (x, y) = (ok(x, CTX), ok(y, CTX));
    assert!(
        x ^ y,
        "{CTX}: of two racing puts of one name exactly one stores"
    );
    let stored = ok(archive.read_segment(&d, ByteRange::All).await, CTX);
    assert!(
        stored == vec![1; 64] || stored == vec![2; 64],
        "{CTX}: the winner is whole"
    );
}
