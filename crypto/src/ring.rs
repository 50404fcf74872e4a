//! The ring Z/2^64 in which masked updates live, and vector addition in it.

/// An element of Z/2^64. All arithmetic on it wraps.
pub type Ring = u64;

/// `acc[i] += x[i]` (wrapping), for summing masked inputs.
///
/// # Panics
/// If the lengths differ. That is local misuse: callers check the length of
/// every peer vector against the round's parameter count before adding.
pub fn add_assign(acc: &mut [Ring], x: &[Ring]) {
    assert_eq!(acc.len(), x.len(), "ring vectors must have equal length");
    for (a, b) in acc.iter_mut().zip(x) {
        *a = a.wrapping_add(*b);
    }
}

/// `acc[i] -= x[i]` (wrapping).
///
/// # Panics
/// If the lengths differ (local misuse, as for [`add_assign`]).
pub fn sub_assign(acc: &mut [Ring], x: &[Ring]) {
    assert_eq!(acc.len(), x.len(), "ring vectors must have equal length");
    for (a, b) in acc.iter_mut().zip(x) {
        *a = a.wrapping_sub(*b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_and_sub_wrap() {
        let mut acc = vec![u64::MAX, 0, 5];
        add_assign(&mut acc, &[1, u64::MAX, 7]);
        assert_eq!(acc, vec![0, u64::MAX, 12]);
        sub_assign(&mut acc, &[1, u64::MAX, 7]);
        assert_eq!(acc, vec![u64::MAX, 0, 5]);
    }

    #[test]
    #[should_panic(expected = "equal length")]
    fn length_mismatch_panics() {
        let mut acc = vec![0u64; 3];
        add_assign(&mut acc, &[1, 2]);
    }
}
