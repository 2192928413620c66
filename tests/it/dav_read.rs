//! Files read through `/dav/` whole and in ranges, across the chunks the blob streams in
//! (256 KiB), and across dav-server's 64 KiB reads within a chunk, byte for byte as they were
//! stored.

use tandem_tests::TestServer;

#[tokio::test]
async fn a_file_reads_back_whole_and_in_ranges_across_chunks() {
    let server = TestServer::start().await;
    // 1,100 KiB that differ everywhere: four chunks and a partial one.
    let body: Vec<u8> = (0u32..1100 * 1024)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let put = server.request("PUT", "/dav/big.bin", &[], &body).await;
    assert!(matches!(put.status, 201 | 204), "{}", put.text());

    let whole = server.request("GET", "/dav/big.bin", &[], b"").await;
    assert_eq!(whole.status, 200);
    assert!(whole.body == body, "the whole file differs");

    for (first, last) in [
        (0usize, 99usize),
        (65_530, 65_545),
        (16_384, 140_000),
        (200_000, 300 * 1024 - 1),
        (262_140, 262_150),
        (500_000, 800_000),
        (1_000_000, 1100 * 1024 - 1),
    ] {
        let range = format!("bytes={first}-{last}");
        let part = server
            .request("GET", "/dav/big.bin", &[("Range", &range)], b"")
            .await;
        assert_eq!(part.status, 206, "{range}");
        assert!(part.body == body[first..=last], "{range} differs");
    }
}
