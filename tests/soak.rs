//! The soak (tests/common/soak.rs): channels opened, used and closed at random, many at
//! once, through the published interface, against peers that echo and misbehave, while
//! the transport's faults change under them; every promise checked as it is kept.
//!
//! About a minute here; `WSKTLS_SOAK_SECONDS=1800` for a long run, `WSKTLS_SOAK_SEED` to
//! replay one (its seed is printed first), `WSKTLS_SOAK_CHANNELS` for more at once.
//! tests/soak_planted.rs shows that it fails on bugs planted in the driver.

mod common;

use common::soak::{self, Plan};

#[test]
fn channels_at_random_under_changing_faults_and_hostile_peers_keep_every_promise() {
    let plan = Plan::from_env(60);
    match soak::run(&plan) {
        Ok(figures) => eprintln!("{figures}"),
        Err(broken) => panic!("{broken}"),
    }
}
