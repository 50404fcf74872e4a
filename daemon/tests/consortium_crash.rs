//! A member of five real daemons is killed with SIGKILL in the middle of a
//! round: the other four finish it (the threshold is 4), the status shows
//! the member missing, and the member, restarted, catches up to the latest
//! model by hash and takes part in a following round.

mod consortium_support;

use std::time::{Duration, Instant};

use consortium_support::{
    WAIT, check_models, expected_models, names, participants_by_round, read_store,
};
use primia_tests::{Consortium, Settings};

const BIN: &str = env!("CARGO_BIN_EXE_primiad");

/// Phases in which a member is well inside a round.
const MID_ROUND: [&str; 4] = ["share-keys", "masked-input", "consistency-check", "unmask"];

fn round_of(s: &serde_json::Value) -> Option<u64> {
    s.pointer("/latest_model/round")?.as_u64()
}

#[test]
fn a_member_killed_mid_round_catches_up_and_rejoins() {
    let mut settings = Settings::fast(5);
    // Big enough vectors that a round lasts a while, small enough for a
    // fast test.
    settings.parameters = 20_000;
    let mut c = Consortium::new(BIN, &settings);
    c.start_all();
    let victim = 3;
    let victim_name = c.members[victim].name.clone();

    c.wait_until("every member connected and past round 1", WAIT, |c| {
        (0..5).all(|i| {
            c.status(i).is_some_and(|s| {
                s["connected"].as_array().is_some_and(|a| a.len() == 4) && round_of(&s) >= Some(1)
            })
        })
    });

    // Kill the victim while it is well inside a round.
    let deadline = Instant::now() + WAIT;
    let killed_in = loop {
        assert!(
            Instant::now() < deadline,
            "never saw the victim mid-round\n{}",
            c.logs()
        );
        let Some(s) = c.status(victim) else { continue };
        let phase = s
            .pointer("/round/phase")
            .and_then(|p| p.as_str())
            .unwrap_or("");
        if MID_ROUND.contains(&phase) {
            c.kill(victim);
            break s["round"]["round"].as_u64().unwrap();
        }
    };
    eprintln!("killed {victim_name} in round {killed_in}");

    // The others finish that round without it (or with its input, if it
    // was already in), and the status shows it missing.
    let others = [0, 1, 2, 4];
    c.wait_until(
        "the others finish the interrupted round and see the victim gone",
        WAIT,
        |c| {
            others.iter().all(|&i| {
                c.status(i).is_some_and(|s| {
                    round_of(&s) >= Some(killed_in)
                        && names(&s, "missing") == std::slice::from_ref(&victim_name)
                })
            })
        },
    );
    let s = c.status_cli(0);
    assert_eq!(
        names(&s, "missing"),
        std::slice::from_ref(&victim_name),
        "{s}"
    );
    assert_eq!(names(&s, "connected").len(), 3, "{s}");
    assert_eq!(c.status_exit_code(victim), Some(3));

    // Let the consortium move on a round without it, then restart it.
    c.wait_until("a round completes without the victim", WAIT, |c| {
        c.status(0).is_some_and(|s| round_of(&s) > Some(killed_in))
    });
    c.start(victim);
    let restarted_at = c.status(0).and_then(|s| round_of(&s)).unwrap();

    // It catches up: same model hash as the others for the same round.
    c.wait_until("the restarted member catches up by hash", WAIT, |c| {
        let (Some(v), Some(o)) = (c.status(victim), c.status(0)) else {
            return false;
        };
        round_of(&v) >= Some(restarted_at)
            && round_of(&v) == round_of(&o)
            && v["latest_model"]["hash"] == o["latest_model"]["hash"]
    });

    // And takes part in a later round: its input is in the sum.
    c.wait_until(
        "the restarted member's input is in a later round's sum",
        WAIT,
        |c| {
            c.status(0).is_some_and(|s| {
                s["recent_attempts"].as_array().unwrap().iter().any(|a| {
                    a["round"].as_u64() > Some(restarted_at)
                        && a["outcome"]["status"] == "completed"
                        && a["participants"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|p| p == victim_name.as_str())
                })
            })
        },
    );
    let s = c.status_cli(victim);
    assert_eq!(names(&s, "connected").len(), 4, "{s}");
    assert!(names(&s, "missing").is_empty(), "{s}");

    for i in 0..5 {
        assert!(
            c.stop(i, Duration::from_secs(20)),
            "{} did not stop cleanly\n{}",
            c.members[i].name,
            c.logs()
        );
    }

    // Every model anyone made or fetched is the one the test computes from
    // the participants the journals name, round by round.
    let stored: Vec<_> = c
        .members
        .iter()
        .map(|m| read_store(&m.storage, settings.parameters))
        .collect();
    let last = stored.iter().map(|s| s.model.round).max().unwrap();
    let participants = participants_by_round(&stored, last);
    let expected = expected_models(settings.parameters, &participants);
    let member_names: Vec<String> = c.members.iter().map(|m| m.name.clone()).collect();
    check_models(&member_names, &stored, &expected);
    // The victim missed at least the round it was killed in or the next.
    let v = &stored[victim];
    assert!(
        (killed_in..=restarted_at).any(|r| !v.completed.contains_key(&r)),
        "the victim completed every round"
    );
}
