//! Classification metrics: accuracy, exact ROC-AUC, sensitivity, specificity, MCC, confusion matrix, loss.
//!
//! For two classes, class 1 is the positive class (pneumonia, opacity) and
//! a case is called positive when its predicted probability of class 1 is
//! at least the decision threshold. For more classes the prediction is the
//! most probable class, and AUC, sensitivity and specificity are
//! one-vs-rest macro averages (as MedMNIST reports AUC).

/// Exact ROC-AUC of scores for a binary problem (label 1 positive): the
/// Mann-Whitney probability that a random positive scores above a random
/// negative, ties counting one half. `None` when a class is absent.
pub fn roc_auc(scores: &[f32], labels: &[u32]) -> Option<f64> {
    assert_eq!(scores.len(), labels.len(), "one score per label");
    let n_pos = labels.iter().filter(|&&l| l == 1).count();
    let n_neg = labels.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Midranks: a run of tied scores shares the average of its ranks.
    let mut rank_sum_pos = 0.0f64;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let midrank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            if labels[k] == 1 {
                rank_sum_pos += midrank;
            }
        }
        i = j + 1;
    }
    let (p, n) = (n_pos as f64, n_neg as f64);
    Some((rank_sum_pos - p * (p + 1.0) / 2.0) / (p * n))
}

/// Matthews correlation coefficient of a K x K confusion matrix (rows true,
/// columns predicted), Gorodkin's generalisation; equals the usual binary
/// MCC for K = 2. 0 when undefined (a row or column sum is all there is).
pub fn mcc(confusion: &[Vec<u64>]) -> f64 {
    let k = confusion.len();
    let s: f64 = confusion.iter().flatten().map(|&x| x as f64).sum();
    let c: f64 = (0..k).map(|i| confusion[i][i] as f64).sum();
    let t: Vec<f64> = (0..k)
        .map(|i| confusion[i].iter().map(|&x| x as f64).sum())
        .collect();
    let p: Vec<f64> = (0..k)
        .map(|j| confusion.iter().map(|r| r[j] as f64).sum())
        .collect();
    let tp: f64 = t.iter().zip(&p).map(|(a, b)| a * b).sum();
    let num = c * s - tp;
    let den = ((s * s - p.iter().map(|x| x * x).sum::<f64>())
        * (s * s - t.iter().map(|x| x * x).sum::<f64>()))
    .sqrt();
    if den == 0.0 { 0.0 } else { num / den }
}

/// What a model achieves on a data set.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Metrics {
    pub examples: usize,
    /// Mean cross-entropy (unweighted), in nats.
    pub loss: f64,
    pub accuracy: f64,
    /// `None` when the data holds a single class.
    pub auc: Option<f64>,
    /// True positive rate (recall of class 1); macro recall for K > 2.
    pub sensitivity: f64,
    /// True negative rate; macro one-vs-rest specificity for K > 2.
    pub specificity: f64,
    pub mcc: f64,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<u64>>,
    /// The probability of class 1 at or above which a case is called
    /// positive (two classes only; `None` for arg-max decisions).
    pub threshold: Option<f32>,
}

/// Computes [`Metrics`] from class probabilities (`probs[i * classes + c]`).
/// With two classes, `threshold` on P(class 1) decides; otherwise the arg-max.
pub fn compute(probs: &[f32], labels: &[u32], classes: usize, threshold: f32) -> Metrics {
    let n = labels.len();
    assert_eq!(probs.len(), n * classes, "one probability row per label");
    let mut confusion = vec![vec![0u64; classes]; classes];
    let mut loss = 0.0f64;
    for (i, &l) in labels.iter().enumerate() {
        let row = &probs[i * classes..(i + 1) * classes];
        let pred = if classes == 2 {
            usize::from(row[1] >= threshold)
        } else {
            row.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(c, _)| c)
        };
        confusion[l as usize][pred] += 1;
        // Clamped so a confident mistake costs a large finite loss, not inf.
        loss -= f64::from(row[l as usize].max(1e-7)).ln();
    }
    let correct: u64 = (0..classes).map(|c| confusion[c][c]).sum();
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    // One-vs-rest recall and specificity per class.
    let row_sum = |c: usize| confusion[c].iter().sum::<u64>();
    let col_sum = |c: usize| confusion.iter().map(|r| r[c]).sum::<u64>();
    let total = n as u64;
    let recall = |c: usize| ratio(confusion[c][c], row_sum(c));
    let spec = |c: usize| {
        let tn = total + confusion[c][c] - row_sum(c) - col_sum(c);
        ratio(tn, total - row_sum(c))
    };
    let (sensitivity, specificity, auc) = if classes == 2 {
        let scores: Vec<f32> = (0..n).map(|i| probs[i * 2 + 1]).collect();
        (recall(1), spec(1), roc_auc(&scores, labels))
    } else {
        let k = classes as f64;
        let aucs: Vec<f64> = (0..classes)
            .filter_map(|c| {
                let scores: Vec<f32> = (0..n).map(|i| probs[i * classes + c]).collect();
                let ovr: Vec<u32> = labels.iter().map(|&l| u32::from(l as usize == c)).collect();
                roc_auc(&scores, &ovr)
            })
            .collect();
        let auc = (!aucs.is_empty()).then(|| aucs.iter().sum::<f64>() / aucs.len() as f64);
        (
            (0..classes).map(recall).sum::<f64>() / k,
            (0..classes).map(spec).sum::<f64>() / k,
            auc,
        )
    };
    Metrics {
        examples: n,
        loss: if n == 0 { 0.0 } else { loss / n as f64 },
        accuracy: ratio(correct, total),
        auc,
        sensitivity,
        specificity,
        mcc: mcc(&confusion),
        confusion,
        threshold: (classes == 2).then_some(threshold),
    }
}

/// The threshold on P(class 1) that maximises Youden's J (sensitivity +
/// specificity - 1) on the given scores; ties go to the threshold nearest
/// 0.5. J does not depend on class prevalence, so a threshold picked on a
/// validation split transfers to a test split with another class mix.
/// Returns 0.5 when a class is absent.
pub fn youden_threshold(scores: &[f32], labels: &[u32]) -> f32 {
    let n_pos = labels.iter().filter(|&&l| l == 1).count();
    let n_neg = labels.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return 0.5;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Threshold at sorted score t: everything >= t is called positive.
    let mut best = (f64::NEG_INFINITY, 0.5f32);
    let mut neg_below = 0usize;
    let mut pos_below = 0usize;
    let mut i = 0;
    while i < order.len() {
        let t = scores[order[i]];
        let sens = (n_pos - pos_below) as f64 / n_pos as f64;
        let spec = neg_below as f64 / n_neg as f64;
        let j = sens + spec - 1.0;
        let better = j > best.0 + 1e-12
            || ((j - best.0).abs() <= 1e-12 && (t - 0.5).abs() < (best.1 - 0.5).abs());
        if better {
            best = (j, t);
        }
        while i < order.len() && scores[order[i]] == t {
            if labels[order[i]] == 1 {
                pos_below += 1;
            } else {
                neg_below += 1;
            }
            i += 1;
        }
    }
    best.1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_by_hand() {
        // Positives 0.8, 0.4; negatives 0.6, 0.2: pairs (0.8>0.6, 0.8>0.2,
        // 0.4<0.6, 0.4>0.2) -> 3 of 4.
        assert_eq!(roc_auc(&[0.8, 0.4, 0.6, 0.2], &[1, 1, 0, 0]), Some(0.75));
        // A tie between a positive and a negative counts one half:
        // pairs (0.5=0.5 -> 0.5, 0.5>0.1 -> 1, 0.9>0.5, 0.9>0.1) -> 3.5 / 4.
        assert_eq!(roc_auc(&[0.5, 0.9, 0.5, 0.1], &[1, 1, 0, 0]), Some(0.875));
        // All scores equal: 0.5.
        assert_eq!(roc_auc(&[0.3; 5], &[1, 0, 1, 0, 0]), Some(0.5));
        assert_eq!(roc_auc(&[0.1, 0.2], &[1, 1]), None);
        assert_eq!(roc_auc(&[0.1, 0.9], &[0, 1]), Some(1.0));
        assert_eq!(roc_auc(&[0.9, 0.1], &[0, 1]), Some(0.0));
    }

    #[test]
    fn binary_metrics_by_hand() {
        // Labels 1,1,1,0,0 with P(1) 0.9, 0.6, 0.3, 0.7, 0.1 at threshold 0.5:
        // predictions 1,1,0,1,0 -> TP 2, FN 1, FP 1, TN 1.
        let p1 = [0.9f32, 0.6, 0.3, 0.7, 0.1];
        let probs: Vec<f32> = p1.iter().flat_map(|&p| [1.0 - p, p]).collect();
        let m = compute(&probs, &[1, 1, 1, 0, 0], 2, 0.5);
        assert_eq!(m.confusion, vec![vec![1, 1], vec![1, 2]]);
        assert!((m.accuracy - 0.6).abs() < 1e-12);
        assert!((m.sensitivity - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.specificity - 0.5).abs() < 1e-12);
        // MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (2-1)/sqrt(3*3*2*2) = 1/6.
        assert!((m.mcc - 1.0 / 6.0).abs() < 1e-12);
        // Pairs: 0.9 beats both, 0.6 beats 0.1 only, 0.3 beats 0.1 only -> 4/6.
        assert!((m.auc.unwrap() - 4.0 / 6.0).abs() < 1e-12);
        let want_loss =
            -(0.9f64.ln() + 0.6f64.ln() + 0.3f64.ln() + 0.3f64.ln() + 0.9f64.ln()) / 5.0;
        assert!(
            (m.loss - want_loss).abs() < 1e-6,
            "{} vs {want_loss}",
            m.loss
        );
        // A higher threshold changes the calls but not the AUC.
        let m = compute(&probs, &[1, 1, 1, 0, 0], 2, 0.8);
        assert_eq!(m.confusion, vec![vec![2, 0], vec![2, 1]]);
        assert!((m.auc.unwrap() - 4.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn mcc_edges() {
        assert_eq!(mcc(&[vec![5, 0], vec![0, 5]]), 1.0);
        assert_eq!(mcc(&[vec![0, 5], vec![5, 0]]), -1.0);
        // Everything predicted as one class: undefined, reported as 0.
        assert_eq!(mcc(&[vec![0, 5], vec![0, 5]]), 0.0);
    }

    #[test]
    fn multiclass_by_hand() {
        // Three classes, arg-max decisions: true 0,1,2,2 predicted 0,2,2,1.
        let probs = [
            0.7, 0.2, 0.1, //
            0.1, 0.3, 0.6, //
            0.1, 0.2, 0.7, //
            0.2, 0.5, 0.3,
        ];
        let m = compute(&probs, &[0, 1, 2, 2], 3, 0.5);
        assert_eq!(
            m.confusion,
            vec![vec![1, 0, 0], vec![0, 0, 1], vec![0, 1, 1]]
        );
        assert!((m.accuracy - 0.5).abs() < 1e-12);
        // Recalls 1, 0, 1/2 -> macro 0.5.
        assert!((m.sensitivity - 0.5).abs() < 1e-12);
        assert_eq!(m.threshold, None);
    }

    #[test]
    fn youden_picks_the_best_cut() {
        // Negatives 0.1, 0.2, 0.35; positives 0.3, 0.8, 0.9: cut at 0.8 gives
        // sens 2/3, spec 1 (J 2/3); cut at 0.3 gives sens 1, spec 2/3 (J 2/3);
        // tie -> nearer 0.5 is 0.3 (|0.2|) vs 0.8 (|0.3|): 0.3.
        let t = youden_threshold(&[0.1, 0.2, 0.35, 0.3, 0.8, 0.9], &[0, 0, 0, 1, 1, 1]);
        assert_eq!(t, 0.3);
        assert_eq!(youden_threshold(&[0.1, 0.9], &[1, 1]), 0.5);
    }
}
