//! Whole rounds in the simulator: sums are exact, dropouts are survived,
//! failed attempts move on to the next leader with fresh keys.

mod common;

use common::{check_outcomes, check_privacy, failures, never_crashed, run, with_random_crashes};
use primia_protocol::sim::{Crash, CrashPoint, Faults, SimConfig};
use primia_protocol::{Event, MemberId, Phase};

#[test]
fn all_members_finish_with_the_exact_sum() {
    for members in [3, 5, 10] {
        let report = run(SimConfig::new(members, 16, 1));
        assert_eq!(check_outcomes(&report), members, "n = {members}");
        let o = report.members[0].outcome.as_ref().unwrap();
        assert_eq!(o.participants.len(), members);
        assert_eq!(o.attempt, 0);
        check_privacy(&report);
    }
}
