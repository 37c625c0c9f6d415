//! Decoding segments: round trips, torn tails, and damage anywhere
//! (issue 12: one bad record must cost that record only).

use super::*;

fn env(id: &str) -> Envelope {
    test_envelope(id)
}

/// A small segment: messages and done records interleaved as the writer
/// leaves them, one message long enough to cross sector boundaries.
/// Returns the octets and each record's range.
fn segment() -> (Vec<u8>, Vec<std::ops::Range<usize>>) {
    let mut seg = Vec::new();
    let mut ranges = Vec::new();
    let mut push = |seg: &mut Vec<u8>, rec: Vec<u8>| {
        ranges.push(seg.len()..seg.len() + rec.len());
        seg.extend_from_slice(&rec);
    };
    push(
        &mut seg,
        encode_message(&env("00000000000000a1"), b"Received: x\\r\\n", b"one\\r\\n"),
    );
    push(
        &mut seg,
        encode_message(&env("00000000000000b2"), b"", b"two\\r\\n"),
    );
    let mut done = Vec::new();
    encode_done("00000000000000a1", &mut done);
    push(&mut seg, done);
    let long = "line of a longer message\\r\\n".repeat(40);
    push(
        &mut seg,
        encode_message(&env("00000000000000c3"), b"", long.as_bytes()),
    );
    let mut done = Vec::new();
    encode_done("00000000000000b2", &mut done);
    push(&mut seg, done);
    push(
        &mut seg,
        encode_message(&env("00000000000000d4"), b"", b"four\\r\\n"),
    );
    (seg, ranges)
}

fn records_at(seg: &[u8], ranges: &[std::ops::Range<usize>]) -> Vec<(usize, Record)> {
    ranges
        .iter()
        .map(|r| {
            (
                r.start,
                decode_one(&seg[r.clone()], &mut usize::MAX.clone())
                    .unwrap()
                    .0,
            )
        })
        .collect()
}

#[test]
fn records_round_trip() {
    let (seg, ranges) = segment();
    let d = decode_all(&seg);
    assert_eq!(d.records, records_at(&seg, &ranges));
    assert_eq!(d.damaged, vec![]);
    assert_eq!(d.torn_at, None);
    assert_eq!(
        d.records[0].1,
        Record::Message(
            Box::new(env("00000000000000a1")),
            b"Received: x\\r\\none\\r\\n".to_vec()
        )
    );
    assert_eq!(d.records[2].1, Record::Done("00000000000000a1".into()));
    // A preallocated segment: the rest is zeros, and ends it cleanly.
    let mut padded = seg.clone();
    padded.extend(std::iter::repeat_n(0u8, 4096));
    assert_eq!(decode_all(&padded), d);
}

#[test]
fn a_tail_cut_by_the_end_of_the_file_is_torn_not_damaged() {
    let (seg, ranges) = segment();
    let last = ranges.last().unwrap().clone();
    for cut in last.start + 1..last.end {
        let d = decode_all(&seg[..cut]);
        assert_eq!(
            d.records,
            records_at(&seg, &ranges[..ranges.len() - 1]),
            "cut {cut}"
        );
        assert_eq!(d.damaged, vec![], "cut {cut}");
        assert_eq!(d.torn_at, Some(last.start), "cut {cut}");
    }
}

#[test]
fn a_tail_cut_at_a_sector_of_zero_fill_is_torn_not_damaged() {
    // In a preallocated segment an unfinished write leaves whole sectors
    // of zeros after what it wrote.
    let (seg, ranges) = segment();
    let long = ranges[3].clone();
    let whole = &seg[..long.start];
    let mut cuts = 0;
    for cut in (long.start + 1..long.end).filter(|c| c % SECTOR == 0) {
        let mut torn = seg[..cut].to_vec();
        torn.resize(long.end + 4096, 0);
        let d = decode_all(&torn);
        assert_eq!(d.records, records_at(whole, &ranges[..3]), "cut {cut}");
        assert_eq!(d.damaged, vec![], "cut {cut}");
        assert_eq!(d.torn_at, Some(long.start), "cut {cut}");
        cuts += 1;
    }
    assert!(cuts >= 1, "the long record crosses no sector boundary");
}

#[test]
fn a_damaged_last_record_that_is_whole_is_reported() {
    let (mut seg, ranges) = segment();
    let n = seg.len();
    seg[n - 3] ^= 1;
    let d = decode_all(&seg);
    assert_eq!(d.records, records_at(&seg, &ranges[..5]));
    let last = ranges[5].clone();
    assert_eq!(
        d.damaged,
        vec![Damaged {
            offset: last.start,
            skipped: last.len(),
            what: Salvaged::Message("00000000000000d4".into()),
        }]
    );
    assert_eq!(d.torn_at, None);
}

/// The flips tried at each offset: every single bit, all bits, and one
/// more at random (seeded: a failure replays).
fn masks(rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut m: Vec<u8> = (0..8).map(|b| 1 << b).collect();
    m.push(0xff);
    m.push(rng.u8(1..));
    m
}

/// Checks what `decode_all` read from `bad`, the segment whose records
/// are `good` at `ranges` with the octet at `at` changed.
fn check_flip(
    bad: &[u8],
    good: &[(usize, Record)],
    ranges: &[std::ops::Range<usize>],
    at: usize,
    what: &str,
) {
    let d = decode_all(bad);
    let hit = ranges.iter().position(|r| r.contains(&at)).unwrap();
    // Every other record is read, at its offset; nothing else is.
    for (j, rec) in good.iter().enumerate() {
        if j != hit {
            assert!(d.records.contains(rec), "{what}: record {j} lost");
        }
    }
    let original = |r: &(usize, Record)| r.0 == ranges[hit].start;
    assert!(
        d.records.len() == good.len() - 1 || d.records.iter().any(original),
        "{what}: {:?}",
        d.records
    );
    if d.records.iter().any(original) {
        // Only the reserved octets are outside the CRC and the checks.
        assert!((5..8).contains(&(at - ranges[hit].start)), "{what}");
        assert_eq!(d.damaged, vec![], "{what}");
        return;
    }
    let r = ranges[hit].clone();
    if hit + 1 < ranges.len() {
        assert_eq!(d.torn_at, None, "{what}");
        assert_eq!(d.damaged.len(), 1, "{what}: {:?}", d.damaged);
        assert_eq!(d.damaged[0].offset, r.start, "{what}");
        assert_eq!(d.damaged[0].skipped, r.len(), "{what}");
    } else {
        // The last record: reported, or taken for a torn write when the
        // damage makes it reach past the end (its length field).
        match d.torn_at {
            Some(t) => {
                assert_eq!(t, r.start, "{what}");
                assert_eq!(d.damaged, vec![], "{what}");
            }
            None => {
                assert_eq!(d.damaged.len(), 1, "{what}: {:?}", d.damaged);
                assert_eq!(d.damaged[0].offset, r.start, "{what}");
            }
        }
    }
}

#[test]
fn a_changed_octet_anywhere_costs_only_its_own_record_issue_12() {
    let (seg, ranges) = segment();
    let good = records_at(&seg, &ranges);
    let mut rng = fastrand::Rng::with_seed(12);
    for pad in [0, 4096] {
        for at in 0..seg.len() {
            for mask in masks(&mut rng) {
                let mut bad = seg.clone();
                bad[at] ^= mask;
                bad.resize(seg.len() + pad, 0);
                check_flip(
                    &bad,
                    &good,
                    &ranges,
                    at,
                    &format!("octet {at} ^ {mask:#04x}, pad {pad}"),
                );
            }
        }
    }
}

#[test]
fn a_damaged_run_of_records_is_skipped_to_the_next_one_that_checks() {
    let (mut seg, ranges) = segment();
    let good = records_at(&seg, &ranges);
    // A zeroed run over records 1 to 3.
    let (from, to) = (ranges[1].start + 4, ranges[3].start + 40);
    seg[from..to].fill(0);
    let d = decode_all(&seg);
    assert_eq!(
        d.records,
        vec![good[0].clone(), good[4].clone(), good[5].clone()]
    );
    assert_eq!(
        d.damaged,
        vec![Damaged {
            offset: ranges[1].start,
            skipped: ranges[4].start - ranges[1].start,
            what: Salvaged::Unknown,
        }]
    );
}

#[test]
fn arbitrary_octets_never_panic_and_never_read_as_records() {
    let mut rng = fastrand::Rng::with_seed(7);
    for len in [0, 1, 15, 16, 17, 100, 4096] {
        for _ in 0..50 {
            let data: Vec<u8> = std::iter::repeat_with(|| rng.u8(..)).take(len).collect();
            let d = decode_all(&data);
            assert_eq!(d.records, vec![]);
        }
    }
    // Headers everywhere, with lengths that fit and CRCs that do not.
    let mut junk = Vec::new();
    while junk.len() < 1 << 16 {
        junk.extend_from_slice(MAGIC);
        junk.extend_from_slice(&[KIND_MESSAGE, 0, 0, 0]);
        junk.extend_from_slice(&8u32.to_le_bytes());
        junk.extend_from_slice(&rng.u32(..).to_le_bytes());
    }
    let d = decode_all(&junk);
    assert_eq!(d.records, vec![]);
    assert_eq!(d.damaged.len(), 1);
}

#[test]
fn resync_work_is_bounded_by_a_budget() {
    // Candidates whose lengths reach to the end: hashing each would be
    // quadratic. The budget stops the scan; the rest counts as damaged.
    let mut junk = Vec::new();
    let total = 1 << 16;
    while junk.len() < total {
        let left = (total - junk.len() - HEADER) as u32;
        junk.extend_from_slice(MAGIC);
        junk.extend_from_slice(&[KIND_DONE, 0, 0, 0]);
        junk.extend_from_slice(&left.saturating_sub(16).to_le_bytes());
        junk.extend_from_slice(&0u32.to_le_bytes());
    }
    let mut budget = 1 << 20;
    assert_eq!(resync(&junk, 0, &mut budget), None);
    assert_eq!(budget, 0, "the scan gave up on its budget");
    // With room in the budget the next record is found past the junk.
    let (seg, ranges) = segment();
    let mut data = junk[..200].to_vec();
    data.extend_from_slice(&seg);
    let d = decode_all(&data);
    assert_eq!(d.records.len(), ranges.len());
    assert_eq!(d.damaged.len(), 1);
    assert_eq!(d.damaged[0].offset, 0);
    assert_eq!(d.damaged[0].skipped, 200);
}

#[test]
fn a_message_whose_kind_octet_reads_done_is_not_a_done_record() {
    // The kind octet is outside the CRC: message 1 -> done 2 is one flip
    // of two bits away.
    let mut rec = encode_message(&env("00000000000000a1"), b"", b"x");
    rec[4] = KIND_DONE;
    assert_eq!(decode_one(&rec, &mut usize::MAX.clone()), None);
}
