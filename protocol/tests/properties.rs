//! Property tests: random consortia, thresholds, crash schedules and network
//! faults; every run must end (no livelock), every finisher must hold the
//! exact sum of the same participants, and no share pair is ever revealed.

mod common;

use common::{check_outcomes, check_privacy, never_crashed, run};
use primia_protocol::sim::{Crash, CrashPoint, Faults, SimConfig};
use primia_protocol::{MemberId, MessageKind, Phase, Threshold};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

fn crash_point() -> impl Strategy<Value = CrashPoint> {
    let phase = prop_oneof![
        Just(Phase::AdvertiseKeys),
        Just(Phase::ShareKeys),
        Just(Phase::MaskedInput),
        Just(Phase::ConsistencyCheck),
        Just(Phase::Unmask),
    ];
    let kind = (0usize..11).prop_map(|i| MessageKind::ALL[i]);
    prop_oneof![
        (0u64..800).prop_map(CrashPoint::AtMillis),
        (0u32..2, phase).prop_map(|(attempt, phase)| CrashPoint::OnPhase { attempt, phase }),
        (0u32..2, kind).prop_map(|(attempt, kind)| CrashPoint::BeforeSend { attempt, kind }),
        (0u32..2).prop_map(|attempt| CrashPoint::AfterPersist { attempt }),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    members: usize,
    threshold: usize,
    seed: u64,
    crashes: Vec<(u16, CrashPoint, Option<u64>)>,
    faults: Faults,
}

fn case() -> impl Strategy<Value = Case> {
    (3usize..=9)
        .prop_flat_map(|n| {
            (
                Just(n),
                (n.div_ceil(2) + 1)..=n,
                any::<u64>(),
                prop::collection::vec(
                    (0..n as u16, crash_point(), prop::option::of(100u64..1500)),
                    0..=n / 2 + 1,
                ),
                (0.0f64..0.08, 0.0f64..0.2, 1u64..5, 5u64..40),
            )
        })
        .prop_map(
            |(members, threshold, seed, crashes, (drop, duplicate, min, max))| Case {
                members,
                threshold,
                seed,
                crashes,
                faults: Faults {
                    drop,
                    duplicate,
                    min_delay_ms: min,
                    max_delay_ms: max,
                },
            },
        )
}

fn config_of(case: &Case) -> SimConfig {
    let mut config = SimConfig::new(case.members, 6, case.seed);
    config.threshold = Threshold::AtLeast(case.threshold as u16);
    config.faults = case.faults;
    config.max_attempts = 12;
    config.max_steps = 400_000;
    for (m, at, restart) in &case.crashes {
        config.crashes.push(Crash {
            member: MemberId(*m),
            at: *at,
            restart_after_ms: *restart,
        });
    }
    config
}

proptest! {
    #![proptest_config(Config {
        cases: 300,
        rng_seed: RngSeed::Fixed(0x005e_ca66),
        failure_persistence: None,
        ..Config::default()
    })]

    #[test]
    fn rounds_are_exact_and_private_under_faults(case in case()) {
        let report = run(config_of(&case));
        check_outcomes(&report);
        check_privacy(&report);
        // On a lossless network with at least t members that never crash,
        // those members all finish.
        let crashed: std::collections::BTreeSet<u16> = case.crashes.iter().map(|c| c.0).collect();
        if case.faults.drop == 0.0 && case.members - crashed.len() >= case.threshold {
            for id in never_crashed(&report) {
                prop_assert!(report.members[id.index()].outcome.is_some(), "{id} did not finish");
            }
        }
    }
}

proptest! {
    #![proptest_config(Config {
        cases: 100,
        rng_seed: RngSeed::Fixed(0x1055),
        failure_persistence: None,
        ..Config::default()
    })]

    /// Crash-free runs on a lossy network: whoever finishes agrees.
    #[test]
    fn lossy_networks_never_split_the_result(
        members in 3usize..=8,
        seed in any::<u64>(),
        drop in 0.0f64..0.25,
        duplicate in 0.0f64..0.3,
    ) {
        let mut config = SimConfig::new(members, 6, seed);
        config.faults = Faults { drop, duplicate, min_delay_ms: 1, max_delay_ms: 60 };
        config.max_attempts = 12;
        let report = run(config);
        check_outcomes(&report);
        check_privacy(&report);
    }
}
