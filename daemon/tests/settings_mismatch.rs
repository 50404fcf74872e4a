//! Members that would combine incompatible updates refuse to work together:
//! one member of three is configured with another model size; it stops
//! with a message that shows both settings lines, and so does every member
//! that hears from it before it is gone. A member learns of the conflict
//! either way: refused when it asks, or asked by the other; the odd member
//! stops even when the others asked it first and are gone before it asks
//! them.

use std::time::Duration;

use primia_tests::{Consortium, Settings};

#[test]
fn members_with_other_settings_stop_and_say_why() {
    let mut c = Consortium::new(env!("CARGO_BIN_EXE_primiad"), &Settings::fast(3));
    let odd = &c.members[2].config;
    let text = std::fs::read_to_string(odd).unwrap();
    assert!(text.contains("vector_len = 16"), "{text}");
    std::fs::write(odd, text.replace("vector_len = 16", "vector_len = 17")).unwrap();
    c.start_all();
    assert!(
        !c.wait_exit(2, Duration::from_secs(60)),
        "the odd member exited successfully"
    );
    let odd_log = std::fs::read_to_string(&c.members[2].log).unwrap();
    // Each line starts with the round protocol's generation: daemons that
    // would misread each other's round messages refuse each other the same
    // way.
    let line = |len: u32| {
        format!(
            "round-protocol={} test-vectors vector_len={len}",
            primiad::node::wire::ROUND_PROTOCOL
        )
    };
    assert!(
        odd_log.contains("uses other settings than this member")
            && odd_log.contains(&line(16))
            && odd_log.contains(&line(17)),
        "the odd member does not show both settings lines:\n{}",
        c.logs()
    );
    // The others noticed too: each either heard the odd member's line and
    // stopped, or refused its request. (Which depends on who asks first:
    // the odd member may be gone before it answers anyone.)
    let noticed = (0..2)
        .filter(|&i| {
            let log = std::fs::read_to_string(&c.members[i].log).unwrap();
            log.contains("uses other settings than this member")
                || log.contains("member uses other settings: refused")
        })
        .count();
    assert!(noticed >= 1, "no other member noticed:\n{}", c.logs());
    for i in 0..2 {
        c.kill(i);
    }
    // No round was run with the odd member.
    for m in &c.members {
        let store = primiad::store::Store::open(&m.storage).unwrap();
        assert_eq!(store.last_journaled_round().unwrap(), None, "{}", m.name);
    }
}
