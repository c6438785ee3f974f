//! Hand-written multi-pass cuts (protocol v2, `CutPass`) through the `replica_session`
//! harness: they commit with the content of each region's last pass, across a crash at
//! every commit step, and the sequences the protocol forbids are refused. The harness
//! itself checks every answer against its model; these tests check the model says what
//! the protocol says.

use bdr_fuzz::replica::{
    self, content_bytes, seed_image, CodecSel, Content, CountSel, GeoSel, IdSel, Input, Op,
    ParentSel, RegionSel, RegionsSel, Scratch, Stats, Step, VolSel, DEV_BYTES, REGION,
};

fn hello() -> Op {
    Op::Hello {
        volume: VolSel::Ours,
        geometry: GeoSel::Default,
        bad_proto: false,
    }
}

fn begin(rescan: bool, regions: RegionsSel) -> Op {
    Op::CutBegin {
        id: IdSel::Next,
        parent: ParentSel::Last,
        rescan,
        regions,
    }
}

fn pass(mask: u16) -> Op {
    Op::CutPass {
        regions: RegionsSel::Mask(mask),
    }
}

/// `n` honest chunks of the next regions of the current pass.
fn chunks(n: usize, content: Content, codec: CodecSel) -> Vec<Op> {
    vec![
        Op::Chunk {
            region: RegionSel::Next,
            content,
            codec,
            tamper: 0,
        };
        n
    ]
}

fn end() -> Op {
    Op::CutEnd {
        id: IdSel::Next,
        counts: CountSel::Right,
    }
}

/// Runs the ops through the harness; its stats and the device at the end.
fn run(seeded: bool, ops: Vec<Op>) -> (Stats, Vec<u8>) {
    let scratch = Scratch::new();
    let s = replica::check(&scratch, &Input { seeded, ops });
    (s, scratch.device_bytes())
}

/// Passes {0, 1, 2, 3, 15} (content 1), {1, 2} (content 2), {2, 15} (content 3), {}.
fn three_pass_cut(rescan: bool) -> Vec<Op> {
    [
        vec![hello(), begin(rescan, RegionsSel::Mask(0x800f))],
        chunks(5, Content::Byte(1), CodecSel::Auto),
        vec![pass(0b0110)],
        chunks(2, Content::Byte(2), CodecSel::Raw),
        vec![pass(0x8004)],
        chunks(2, Content::Text(3), CodecSel::Zstd),
        vec![pass(0), end()],
    ]
    .concat()
}

/// `base` with the content of the last pass of `three_pass_cut` in each region.
fn three_pass_image(mut img: Vec<u8>) -> Vec<u8> {
    for (r, c) in [
        (0, Content::Byte(1)),
        (3, Content::Byte(1)),
        (1, Content::Byte(2)),
        (2, Content::Text(3)),
        (15, Content::Text(3)),
    ] {
        let off = r * REGION;
        let len = REGION.min(DEV_BYTES - off) as usize;
        img[off as usize..off as usize + len].copy_from_slice(&content_bytes(c, off, len));
    }
    img
}

#[test]
fn multi_pass_cut_commits_with_last_pass_content() {
    let (s, dev) = run(true, three_pass_cut(false));
    assert_eq!(s.commits, 1, "{s:?}");
    assert_eq!(s.multi_pass_commits, 1, "{s:?}");
    assert_eq!(s.rewritten_commits, 1, "{s:?}");
    assert_eq!(s.passes, 3, "{s:?}");
    assert_eq!(s.refusals, 0, "{s:?}");
    assert!(
        dev == three_pass_image(seed_image()),
        "not the last passes' content"
    );
}

#[test]
fn multi_pass_seed_cut_commits_with_last_pass_content() {
    // A new replica's first cut goes straight to the device, pass after pass.
    let (s, dev) = run(false, three_pass_cut(true));
    assert_eq!(
        (s.commits, s.seeds_committed, s.multi_pass_commits),
        (1, 1, 1)
    );
    assert!(dev == three_pass_image(vec![0; DEV_BYTES as usize]));
}

#[test]
fn multi_pass_cut_survives_a_crash_at_every_commit_step() {
    let new_image = three_pass_image(seed_image());
    let mut steps = vec![Step::JournalSynced, Step::CommitRecord, Step::DeviceSynced];
    steps.extend([Step::StateUpdated, Step::JournalRemoved]);
    // 9 chunk records; DeviceWrite(k) replays record k (region 2 is written three times).
    for k in 0..9 {
        steps.extend([Step::JournalAppend(k), Step::DeviceWrite(k)]);
    }
    for step in steps {
        let ops = [
            vec![Op::Restart {
                recovery_crash: None,
                arm: Some(step),
                tear: None,
            }],
            three_pass_cut(false),
        ]
        .concat();
        let (s, dev) = run(true, ops);
        let durable = !matches!(step, Step::JournalAppend(_) | Step::JournalSynced);
        if let Step::JournalAppend(_) = step {
            assert_eq!(s.crashes_receiving, 1, "{step:?}: {s:?}");
        } else {
            assert_eq!(s.crashes_at_commit, 1, "{step:?}: {s:?}");
            assert_eq!(s.multi_pass_crashes, 1, "{step:?}: {s:?}");
        }
        let want = if durable { &new_image } else { &seed_image() };
        assert!(
            dev == *want,
            "{step:?}: device is not the cut the step left"
        );
    }
}

#[test]
fn sixty_four_passes_commit_the_sixty_fifth_is_refused() {
    let ops = |count| {
        vec![
            hello(),
            begin(false, RegionsSel::Mask(0b1)),
            Op::Chunk {
                region: RegionSel::Next,
                content: Content::Zeros,
                codec: CodecSel::Auto,
                tamper: 0,
            },
            Op::Passes {
                count,
                mask: 0b101,
                content: Content::Random(7),
            },
            end(),
        ]
    };
    let (s, _) = run(true, ops(63));
    assert_eq!((s.passes, s.multi_pass_commits, s.refusals), (63, 1, 0));
    let (s, _) = run(true, ops(64));
    assert_eq!((s.passes, s.passes_refused, s.commits), (63, 1, 0));
}

#[test]
fn forbidden_passes_are_refused() {
    let cases: Vec<(&str, Vec<Op>)> = vec![
        ("before Hello", vec![pass(1)]),
        ("between cuts", vec![hello(), pass(1)]),
        (
            "previous pass incomplete",
            [
                vec![hello(), begin(false, RegionsSel::Mask(0b11))],
                chunks(1, Content::Zeros, CodecSel::Auto),
                vec![pass(0b1)],
            ]
            .concat(),
        ),
        (
            "region past the volume",
            vec![
                hello(),
                begin(false, RegionsSel::Mask(0)),
                Op::CutPass {
                    regions: RegionsSel::Wide(1 << 16),
                },
            ],
        ),
        (
            "garbage set",
            vec![
                hello(),
                begin(false, RegionsSel::Mask(0)),
                Op::CutPass {
                    regions: RegionsSel::Garbage(vec![1, 2, 3]),
                },
            ],
        ),
    ];
    for (what, ops) in cases {
        let (s, _) = run(true, ops);
        assert_eq!((s.passes, s.passes_refused), (0, 1), "{what}: {s:?}");
    }
}

#[test]
fn pass_rules_for_chunks_regions_and_cut_end() {
    let refused: Vec<(&str, Vec<Op>)> = vec![
        (
            "CutEnd with the last pass incomplete",
            [
                vec![hello(), begin(false, RegionsSel::Mask(0b1))],
                chunks(1, Content::Zeros, CodecSel::Auto),
                vec![pass(0b11)],
                chunks(1, Content::Zeros, CodecSel::Auto),
                vec![end()],
            ]
            .concat(),
        ),
        (
            "chunk of an earlier pass's region",
            [
                vec![hello(), begin(false, RegionsSel::Mask(0b11))],
                chunks(2, Content::Zeros, CodecSel::Auto),
                vec![
                    pass(0b100),
                    Op::Chunk {
                        region: RegionSel::Region(0),
                        content: Content::Zeros,
                        codec: CodecSel::Auto,
                        tamper: 0,
                    },
                ],
            ]
            .concat(),
        ),
        (
            "CutRegions after a chunk of the pass",
            [
                vec![hello(), begin(false, RegionsSel::Mask(0))],
                vec![pass(0b10)],
                chunks(1, Content::Zeros, CodecSel::Auto),
                vec![Op::CutRegions {
                    regions: RegionsSel::Mask(0b100),
                }],
            ]
            .concat(),
        ),
        (
            "CutEnd counting one chunk per region",
            [
                vec![hello(), begin(false, RegionsSel::Mask(0b11))],
                chunks(2, Content::Zeros, CodecSel::Auto),
                vec![pass(0b11)],
                chunks(2, Content::Zeros, CodecSel::Auto),
                vec![Op::CutEnd {
                    id: IdSel::Next,
                    counts: CountSel::ChunksOff(-2),
                }],
            ]
            .concat(),
        ),
    ];
    for (what, ops) in refused {
        let (s, _) = run(true, ops);
        assert_eq!((s.refusals, s.commits), (1, 0), "{what}: {s:?}");
    }
    // CutRegions grows a later pass before its first chunk; the pass's order starts over.
    let ops = [
        vec![hello(), begin(false, RegionsSel::Mask(0b1000))],
        chunks(1, Content::Byte(1), CodecSel::Auto),
        vec![
            pass(0b10),
            Op::CutRegions {
                regions: RegionsSel::Mask(0b100),
            },
        ],
        chunks(2, Content::Byte(2), CodecSel::Auto),
        vec![end()],
    ]
    .concat();
    let (s, _) = run(true, ops);
    assert_eq!((s.refusals, s.multi_pass_commits), (0, 1), "{s:?}");
}
