//! Parameters of the networks: flat-vector round trip, fingerprints, seeded initialisation, weight files.

use candle_core::{Device, Tensor};
use primia_model::{Architecture, Model, ModelError, ModelSpec};

fn spec(arch: Architecture, size: usize) -> ModelSpec {
    ModelSpec::new(arch, size, 2).unwrap()
}

fn cnn() -> Model {
    Model::new(spec(Architecture::CompactCnn, 28), 1).unwrap()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Values chosen to catch any conversion: negative zero, subnormals,
/// extremes and values that do not survive a trip through f16 or f64
/// rounding unchanged if mishandled.
fn awkward_values(n: usize) -> Vec<f32> {
    let special = [
        -0.0f32,
        f32::MIN_POSITIVE / 3.0,
        -f32::MIN_POSITIVE / 7.0,
        f32::MAX,
        f32::MIN,
        1.0 + f32::EPSILON,
        std::f32::consts::PI,
        -1e-30,
    ];
    (0..n)
        .map(|i| {
            if i % 97 < special.len() {
                special[i % 97]
            } else {
                (i as f32 * 0.618_034).sin() * 3.0
            }
        })
        .collect()
}

#[test]
fn flatten_unflatten_roundtrip_is_bit_exact() {
    for m in [
        cnn(),
        Model::new(spec(Architecture::ResNet18, 28), 1).unwrap(),
    ] {
        let mut m = m;
        let n = m.param_count();
        let values = awkward_values(n);
        m.unflatten(&values).unwrap();
        let back = m.flatten().unwrap();
        assert_eq!(bits(&back), bits(&values), "{:?}", m.spec());
        // And the other way: flatten, unflatten into a fresh model, flatten.
        let mut other = Model::new(m.spec().clone(), 99).unwrap();
        other.unflatten(&back).unwrap();
        assert_eq!(bits(&other.flatten().unwrap()), bits(&values));
    }
}

#[test]
fn flat_order_is_sorted_by_name() {
    let mut m = cnn();
    let shapes = m.param_shapes();
    let names: Vec<&String> = shapes.iter().map(|(n, _)| n).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    // The first parameter's values come first: set the flat vector to its
    // index and check the first tensor in name order holds 0, 1, 2, ...
    let n = m.param_count();
    let idx: Vec<f32> = (0..n).map(|i| i as f32).collect();
    m.unflatten(&idx).unwrap();
    let bytes = m.to_safetensors().unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let first = st.tensor(&shapes[0].0).unwrap();
    let v: Vec<f32> = first
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let len: usize = shapes[0].1.iter().product();
    assert_eq!(v, (0..len).map(|i| i as f32).collect::<Vec<_>>());
}

#[test]
fn unflatten_refuses_wrong_length() {
    let mut m = cnn();
    let n = m.param_count();
    let before = m.flatten().unwrap();
    match m.unflatten(&vec![0.0; n - 1]) {
        Err(ModelError::FlatLength { expected, got }) => {
            assert_eq!((expected, got), (n, n - 1));
        }
        other => panic!("expected a length error, got {other:?}"),
    }
    assert!(m.unflatten(&vec![0.0; n + 1]).is_err());
    assert_eq!(
        m.flatten().unwrap(),
        before,
        "a refused vector changes nothing"
    );
}

#[test]
fn fingerprints_tell_architectures_and_sizes_apart() {
    let a = cnn().fingerprint();
    let b = Model::new(spec(Architecture::ResNet18, 28), 1)
        .unwrap()
        .fingerprint();
    let c = Model::new(spec(Architecture::CompactCnn, 64), 1)
        .unwrap()
        .fingerprint();
    let d = Model::new(ModelSpec::new(Architecture::CompactCnn, 28, 3).unwrap(), 1)
        .unwrap()
        .fingerprint();
    let e = Model::new(spec(Architecture::ResNet18, 224), 1)
        .unwrap()
        .fingerprint();
    let all = [a, b, c, d, e];
    for i in 0..all.len() {
        for j in i + 1..all.len() {
            assert_ne!(all[i], all[j], "{i} vs {j}");
        }
    }
    // Weights do not enter it: another seed, same fingerprint.
    assert_eq!(
        Model::new(spec(Architecture::CompactCnn, 28), 7)
            .unwrap()
            .fingerprint(),
        a
    );
    // The CNN at 28 and at 30 has the same parameters (no stem below 40)
    // but the spec is hashed too.
    let f = Model::new(spec(Architecture::CompactCnn, 30), 1)
        .unwrap()
        .fingerprint();
    assert_eq!(
        Model::new(spec(Architecture::CompactCnn, 30), 1)
            .unwrap()
            .param_shapes(),
        cnn().param_shapes()
    );
    assert_ne!(f, a);
    assert_eq!(a.to_hex().len(), 64);
}

#[test]
fn clones_are_independent() {
    let mut a = cnn();
    let b = a.try_clone().unwrap();
    assert_eq!(bits(&a.flatten().unwrap()), bits(&b.flatten().unwrap()));
    a.unflatten(&vec![0.5; a.param_count()]).unwrap();
    assert_ne!(a.flatten().unwrap(), b.flatten().unwrap());
    let mut c = Model::new(spec(Architecture::CompactCnn, 28), 9).unwrap();
    c.copy_weights_from(&b).unwrap();
    assert_eq!(bits(&c.flatten().unwrap()), bits(&b.flatten().unwrap()));
    let other = Model::new(spec(Architecture::CompactCnn, 64), 9).unwrap();
    assert!(c.copy_weights_from(&other).is_err());
}

#[test]
fn same_seed_same_weights() {
    let a = cnn().flatten().unwrap();
    let b = cnn().flatten().unwrap();
    assert_eq!(bits(&a), bits(&b));
    let c = Model::new(spec(Architecture::CompactCnn, 28), 2)
        .unwrap()
        .flatten()
        .unwrap();
    assert_ne!(bits(&a), bits(&c));
}

#[test]
fn resnet18_has_the_expected_parameters_and_output_shapes() {
    let m28 = Model::new(spec(Architecture::ResNet18, 28), 0).unwrap();
    let m224 = Model::new(spec(Architecture::ResNet18, 224), 0).unwrap();
    // Hand count for 1 input channel, 2 classes, GroupNorm (scale + shift).
    // Stem 3x3: 64*9; stages: convs 3x3 and 1x1 projections; norms 2*C each; fc.
    let conv = |cin: usize, cout: usize, k: usize| cin * cout * k * k;
    let mut n = 0;
    let mut c_in = 64;
    for c_out in [64, 128, 256, 512] {
        for b in 0..2 {
            n += conv(c_in, c_out, 3) + conv(c_out, c_out, 3) + 2 * (2 * c_out);
            if b == 0 && c_in != c_out {
                n += conv(c_in, c_out, 1) + 2 * c_out;
            }
            c_in = c_out;
        }
    }
    n += 512 * 2 + 2;
    assert_eq!(m28.param_count(), n + conv(1, 64, 3) + 2 * 64);
    assert_eq!(m224.param_count(), n + conv(1, 64, 7) + 2 * 64);

    let x = Tensor::zeros((1, 1, 28, 28), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert_eq!(m28.forward(&x).unwrap().dims(), &[1, 2]);
    let x = Tensor::zeros((1, 1, 224, 224), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert_eq!(m224.forward(&x).unwrap().dims(), &[1, 2]);
    // The wrong input size is an error, not a panic or a silent resize.
    assert!(m28.forward(&x).is_err());
}

#[test]
fn compact_cnn_takes_larger_inputs() {
    for size in [16, 28, 64, 224] {
        let m = Model::new(spec(Architecture::CompactCnn, size), 0).unwrap();
        let x = Tensor::zeros((2, 1, size, size), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert_eq!(m.forward(&x).unwrap().dims(), &[2, 2], "size {size}");
    }
}

#[test]
fn weights_file_roundtrip_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let mut m = cnn();
    m.unflatten(&awkward_values(m.param_count())).unwrap();
    m.save(&path).unwrap();
    let back = Model::load(&path).unwrap();
    assert_eq!(back.spec(), m.spec());
    assert_eq!(back.fingerprint(), m.fingerprint());
    assert_eq!(bits(&back.flatten().unwrap()), bits(&m.flatten().unwrap()));

    // Into a model of another architecture: refused, and nothing changes.
    let bytes = std::fs::read(&path).unwrap();
    let mut other = Model::new(spec(Architecture::CompactCnn, 64), 3).unwrap();
    let before = other.flatten().unwrap();
    let err = other.load_safetensors_into(&bytes, "w").unwrap_err();
    assert!(err.to_string().contains("made for model"), "{err}");
    assert_eq!(other.flatten().unwrap(), before);

    // Truncated and garbage files.
    let err = Model::from_safetensors(&bytes[..bytes.len() - 10], "cut").unwrap_err();
    assert!(err.to_string().contains("bad weights cut"), "{err}");
    assert!(Model::from_safetensors(b"not a weights file", "junk").is_err());
    assert!(Model::load(&dir.path().join("missing.safetensors")).is_err());

    // A file with the right names but one tensor of the wrong shape.
    let mut views = Vec::new();
    let raws: Vec<(String, Vec<usize>, Vec<u8>)> = m
        .param_shapes()
        .into_iter()
        .enumerate()
        .map(|(i, (name, mut dims))| {
            if i == 0 {
                dims[0] += 1;
            }
            let n: usize = dims.iter().product();
            (name, dims, vec![0u8; n * 4])
        })
        .collect();
    for (name, dims, raw) in &raws {
        views.push((
            name.clone(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, dims.clone(), raw)
                .unwrap(),
        ));
    }
    let bad = safetensors::serialize(views, None).unwrap();
    let err = m.load_safetensors_into(&bad, "reshaped").unwrap_err();
    assert!(err.to_string().contains("has shape"), "{err}");
}
