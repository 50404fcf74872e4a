//! Splitting a data set across hospitals: IID and Dirichlet label skew, deterministic by seed, counts reported.

use primia_model::Dataset;
use primia_model::data::split::{SplitScheme, split_indices};

/// 1000 labels over 3 classes: 500 / 300 / 200.
fn labels() -> Vec<u32> {
    (0..1000u32)
        .map(|i| match i % 10 {
            0..=4 => 0,
            5..=7 => 1,
            _ => 2,
        })
        .collect()
}

fn check_partition(
    split: &primia_model::data::split::HospitalSplit,
    labels: &[u32],
    classes: usize,
) {
    let mut seen = vec![0u32; labels.len()];
    for (h, idx) in split.indices.iter().enumerate() {
        let mut counts = vec![0; classes];
        for &i in idx {
            seen[i] += 1;
            counts[labels[i] as usize] += 1;
        }
        assert_eq!(counts, split.counts[h], "reported counts of hospital {h}");
        assert!(idx.windows(2).all(|w| w[0] < w[1]), "indices ascending");
    }
    assert!(
        seen.iter().all(|&s| s == 1),
        "every example at exactly one hospital"
    );
}

#[test]
fn iid_split_is_even_and_deterministic() {
    let l = labels();
    let s = split_indices(&l, 3, 7, SplitScheme::Iid, 42).unwrap();
    check_partition(&s, &l, 3);
    let sizes: Vec<usize> = s.indices.iter().map(Vec::len).collect();
    assert_eq!(sizes.iter().sum::<usize>(), 1000);
    assert!(
        sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
        "{sizes:?}"
    );
    // Label mix close to the global one (500/300/200 over 7 is ~71/43/29).
    for c in &s.counts {
        assert!(
            (50..95).contains(&c[0]) && (25..60).contains(&c[1]),
            "{c:?}"
        );
    }
    assert_eq!(s, split_indices(&l, 3, 7, SplitScheme::Iid, 42).unwrap());
    assert_ne!(s, split_indices(&l, 3, 7, SplitScheme::Iid, 43).unwrap());
    assert!(s.report().starts_with("hospital 0: "));
    assert_eq!(s.report().lines().count(), 7);
}

/// Share of a hospital's data taken by its most common class, averaged.
fn mean_dominance(s: &primia_model::data::split::HospitalSplit) -> f64 {
    let v: Vec<f64> = s
        .counts
        .iter()
        .filter(|c| c.iter().sum::<usize>() > 0)
        .map(|c| *c.iter().max().unwrap() as f64 / c.iter().sum::<usize>() as f64)
        .collect();
    v.iter().sum::<f64>() / v.len() as f64
}

#[test]
fn dirichlet_split_skews_labels_by_alpha() {
    let l = labels();
    let skewed = SplitScheme::Dirichlet {
        alpha: 0.1,
        min_per_hospital: 10,
    };
    let mild = SplitScheme::Dirichlet {
        alpha: 100.0,
        min_per_hospital: 10,
    };
    let a = split_indices(&l, 3, 5, skewed, 1).unwrap();
    let b = split_indices(&l, 3, 5, mild, 1).unwrap();
    check_partition(&a, &l, 3);
    check_partition(&b, &l, 3);
    assert!(a.indices.iter().all(|h| h.len() >= 10));
    assert_eq!(a, split_indices(&l, 3, 5, skewed, 1).unwrap());
    assert_ne!(a, split_indices(&l, 3, 5, skewed, 2).unwrap());
    // Small alpha: hospitals dominated by one class; large alpha: near the
    // global 50% share of class 0.
    let (da, db) = (mean_dominance(&a), mean_dominance(&b));
    assert!(da > 0.75, "alpha 0.1 dominance {da}\n{}", a.report());
    assert!(db < 0.6, "alpha 100 dominance {db}\n{}", b.report());
}

#[test]
fn impossible_splits_are_refused() {
    let l = labels();
    assert!(split_indices(&l, 3, 0, SplitScheme::Iid, 0).is_err());
    assert!(split_indices(&l[..3], 3, 4, SplitScheme::Iid, 0).is_err());
    let bad_alpha = SplitScheme::Dirichlet {
        alpha: 0.0,
        min_per_hospital: 0,
    };
    assert!(split_indices(&l, 3, 4, bad_alpha, 0).is_err());
    let too_many = SplitScheme::Dirichlet {
        alpha: 1.0,
        min_per_hospital: 300,
    };
    let err = split_indices(&l, 3, 4, too_many, 0).unwrap_err();
    assert!(err.to_string().contains("cannot give each"), "{err}");
    assert!(split_indices(&[0, 5], 3, 1, SplitScheme::Iid, 0).is_err());
    // Tiny alpha still terminates with a valid partition.
    let tiny = SplitScheme::Dirichlet {
        alpha: 1e-4,
        min_per_hospital: 0,
    };
    check_partition(&split_indices(&l, 3, 4, tiny, 0).unwrap(), &l, 3);
}

#[test]
fn dataset_split_gives_each_hospital_its_examples() {
    let l: Vec<u32> = (0..40).map(|i| (i % 2) as u32).collect();
    let images: Vec<f32> = (0..40 * 4).map(|i| (i / 4) as f32 / 40.0).collect();
    let d = Dataset::new(images, l, 2, 2).unwrap();
    let (parts, split) = d.split_hospitals(3, SplitScheme::Iid, 9).unwrap();
    assert_eq!(parts.len(), 3);
    for (p, idx) in parts.iter().zip(&split.indices) {
        assert_eq!(p.len(), idx.len());
        for (k, &i) in idx.iter().enumerate() {
            assert_eq!(p.image(k), d.image(i));
            assert_eq!(p.labels()[k], d.labels()[i]);
        }
    }
}
