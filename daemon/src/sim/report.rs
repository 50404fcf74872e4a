//! A simulation's report: the table people read, and the report directory
//! (`report.json`, `rounds.csv`, `learning_curves.png`, `roc.png`).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use plotters::prelude::*;

use super::SimReport;

/// ROC curve points (false positive rate, true positive rate), from (0, 0)
/// to (1, 1), one point per distinct score.
pub fn roc_points(scores: &[f32], labels: &[u32]) -> Vec<(f64, f64)> {
    let pos = labels.iter().filter(|&&l| l == 1).count() as f64;
    let neg = labels.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return Vec::new();
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut points = vec![(0.0, 0.0)];
    let (mut tp, mut fp) = (0.0, 0.0);
    for (k, &i) in order.iter().enumerate() {
        if labels[i] == 1 {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        let last_of_tie = order.get(k + 1).is_none_or(|&j| scores[j] != scores[i]);
        if last_of_tie {
            points.push((fp / neg, tp / pos));
        }
    }
    points
}

fn opt(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), |v| format!("{v:.4}"))
}

/// The per-round table and the summary, as printed at the end of a run.
pub fn table(r: &SimReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>5}  {:>12}  {:>8}  {:>7}  {:>9}  {:>7}  {:>7}  dropped",
        "round", "participants", "dropouts", "time_s", "test_loss", "acc", "auc"
    );
    for row in &r.per_round {
        let _ = writeln!(
            s,
            "{:>5}  {:>12}  {:>8}  {:>7.1}  {:>9.4}  {:>7.4}  {:>7}  {}",
            row.round,
            row.participants,
            row.dropouts,
            row.round_s,
            row.test_loss,
            row.test_acc,
            opt(row.test_auc),
            row.dropped.join(",")
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "federated ({} hospitals, {}, secure aggregation t={} of {}): test AUC {} ACC {:.4}",
        r.hospitals,
        r.split,
        r.threshold,
        r.hospitals,
        opt(r.test_auc),
        r.test_acc
    );
    if let Some(c) = &r.central {
        let _ = writeln!(
            s,
            "centralised baseline (pooled data, same steps):  test AUC {} ACC {:.4}",
            opt(c.auc),
            c.acc
        );
    }
    for (i, (auc, acc)) in r.alone_test_auc.iter().zip(&r.alone_test_acc).enumerate() {
        let _ = writeln!(
            s,
            "hospital-{} alone:                                test AUC {} ACC {:.4}",
            i + 1,
            opt(*auc),
            acc
        );
    }
    if let (Some(target), Some(delta)) = (r.dp_target_epsilon, r.dp_delta) {
        let spent: Vec<String> = r
            .privacy_epsilon
            .iter()
            .map(|e| format!("{e:.2}"))
            .collect();
        let _ = writeln!(
            s,
            "differential privacy: budget epsilon {target} at delta {delta:e}; spent per hospital: {}",
            spent.join(", ")
        );
    }
    for f in &r.failures {
        let _ = writeln!(s, "failure: {f}");
    }
    let _ = writeln!(
        s,
        "members agree on the final model: {}; model {}",
        if r.members_agree { "yes" } else { "NO" },
        &r.model_hash[..16.min(r.model_hash.len())]
    );
    let _ = writeln!(
        s,
        "wall time {:.1} s (federated {:.1} s)",
        r.wall_s, r.federated_s
    );
    s
}

/// Writes `report.json`, `rounds.csv` and the plots into `dir`. A plot
/// that cannot be drawn (no fonts on the machine, say) is reported in the
/// returned warnings; the data files are always written.
pub fn write(r: &SimReport, dir: &Path) -> anyhow::Result<Vec<String>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let json = serde_json::to_string_pretty(r)?;
    std::fs::write(dir.join("report.json"), json + "\n")
        .with_context(|| format!("cannot write {}", dir.join("report.json").display()))?;
    let mut csv =
        String::from("round,participants,dropouts,round_s,test_loss,test_acc,test_auc,model\n");
    for row in &r.per_round {
        let _ = writeln!(
            csv,
            "{},{},{},{:.3},{:.6},{:.6},{},{}",
            row.round,
            row.participants,
            row.dropouts,
            row.round_s,
            row.test_loss,
            row.test_acc,
            row.test_auc.map_or_else(String::new, |a| format!("{a:.6}")),
            row.model
        );
    }
    std::fs::write(dir.join("rounds.csv"), csv)
        .with_context(|| format!("cannot write {}", dir.join("rounds.csv").display()))?;
    let mut warnings = Vec::new();
    if let Err(e) = learning_curves(r, &dir.join("learning_curves.png")) {
        warnings.push(format!("learning_curves.png not drawn: {e}"));
    }
    if let Err(e) = roc_plot(r, &dir.join("roc.png")) {
        warnings.push(format!("roc.png not drawn: {e}"));
    }
    Ok(warnings)
}

type PlotResult = Result<(), Box<dyn std::error::Error>>;

/// AUC and loss of the global model against the round, with the
/// centralised baseline's AUC as a line.
fn learning_curves(r: &SimReport, path: &Path) -> PlotResult {
    let root = BitMapBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(600);
    let rounds = r.per_round.len().max(1) as f64;
    let aucs: Vec<(f64, f64)> = r
        .per_round
        .iter()
        .filter_map(|row| row.test_auc.map(|a| (row.round as f64, a)))
        .collect();
    let low = aucs
        .iter()
        .map(|p| p.1)
        .chain(r.central_test_auc)
        .fold(1.0f64, f64::min)
        .clamp(0.0, 0.9);
    let mut chart = ChartBuilder::on(&left)
        .caption("Test ROC-AUC of the global model", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..rounds + 0.5, (low - 0.02).max(0.0)..1.0)?;
    chart
        .configure_mesh()
        .x_desc("round")
        .y_desc("ROC-AUC")
        .draw()?;
    chart
        .draw_series(LineSeries::new(aucs.clone(), BLUE.stroke_width(2)))?
        .label("federated (secure aggregation)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart.draw_series(aucs.iter().map(|&p| Circle::new(p, 3, BLUE.filled())))?;
    if let Some(c) = r.central_test_auc {
        chart
            .draw_series(LineSeries::new(
                vec![(0.0, c), (rounds + 0.5, c)],
                RED.stroke_width(2),
            ))?
            .label("centralised baseline")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;

    let losses: Vec<(f64, f64)> = r
        .per_round
        .iter()
        .map(|row| (row.round as f64, row.test_loss))
        .collect();
    let high = losses.iter().map(|p| p.1).fold(0.1f64, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&right)
        .caption("Test loss of the global model", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..rounds + 0.5, 0.0..high)?;
    chart
        .configure_mesh()
        .x_desc("round")
        .y_desc("cross-entropy")
        .draw()?;
    chart.draw_series(LineSeries::new(losses.clone(), BLUE.stroke_width(2)))?;
    chart.draw_series(losses.iter().map(|&p| Circle::new(p, 3, BLUE.filled())))?;
    root.present()?;
    Ok(())
}

/// ROC curves of the final global model and of the centralised baseline.
fn roc_plot(r: &SimReport, path: &Path) -> PlotResult {
    let root = BitMapBackend::new(path, (600, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("ROC on the test split", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..1.0, 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("false positive rate")
        .y_desc("true positive rate")
        .draw()?;
    chart.draw_series(LineSeries::new(
        vec![(0.0, 0.0), (1.0, 1.0)],
        BLACK.mix(0.3),
    ))?;
    chart
        .draw_series(LineSeries::new(
            r.final_model.roc.clone(),
            BLUE.stroke_width(2),
        ))?
        .label(format!("federated (AUC {})", opt(r.final_model.auc)))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    if let Some(c) = &r.central {
        chart
            .draw_series(LineSeries::new(c.roc.clone(), RED.stroke_width(2)))?
            .label(format!("centralised (AUC {})", opt(c.auc)))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roc_of_a_perfect_and_of_a_useless_score() {
        let perfect = roc_points(&[0.9, 0.8, 0.2, 0.1], &[1, 1, 0, 0]);
        assert_eq!(
            perfect,
            vec![(0.0, 0.0), (0.0, 0.5), (0.0, 1.0), (0.5, 1.0), (1.0, 1.0)]
        );
        let tied = roc_points(&[0.5; 4], &[1, 0, 1, 0]);
        assert_eq!(tied, vec![(0.0, 0.0), (1.0, 1.0)]);
        assert!(roc_points(&[0.5, 0.4], &[1, 1]).is_empty());
    }
}
