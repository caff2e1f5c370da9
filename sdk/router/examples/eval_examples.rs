//! Evaluates the example classifier of a manifest on a labelled JSONL file:
//! `cargo run --release -p arny-router --example eval_examples -- MANIFEST DATA.jsonl [THRESHOLD]`.
//! Prints accuracy, cloud share, calibration (ECE) and the misrouted lines.

use std::sync::Arc;

use arny_router::{CLOUD, ExampleClassifier, ExampleOptions, Gateway, LabelExamples};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(&args[1]).unwrap()).unwrap();
    let threshold: f32 = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(0.7);
    let strs = |v: &toml::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    let mut sets = Vec::new();
    for s in manifest["specialists"].as_array().unwrap() {
        sets.push(LabelExamples {
            label: s["name"].as_str().unwrap().into(),
            examples: strs(&s["examples"]),
        });
    }
    sets.push(LabelExamples {
        label: CLOUD.into(),
        examples: strs(&manifest["gateway"]["cloud_examples"]),
    });
    let c = ExampleClassifier::train(&sets, &ExampleOptions::default()).unwrap();
    println!("{:?}", c.report());
    let g = Gateway::new(Arc::new(c), threshold).unwrap();
    let data = std::fs::read_to_string(&args[2]).unwrap();
    let (mut n, mut ok, mut ok_top, mut cloud) = (0, 0, 0, 0);
    let mut bins = [(0usize, 0usize, 0f32); 10];
    for line in data.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let text = v["text"].as_str().unwrap();
        let want = v["label"].as_str().unwrap();
        let d = futures::executor::block_on(g.route(text)).unwrap();
        n += 1;
        if d.label == want {
            ok += 1;
        } else {
            println!(
                "MISS want={want:9} got={:9} top={:9} p={:.2}  {text}",
                d.label, d.top, d.confidence
            );
        }
        if d.top == want {
            ok_top += 1;
        }
        if d.label == CLOUD {
            cloud += 1;
        }
        let b = ((d.confidence * 10.0) as usize).min(9);
        bins[b].0 += 1;
        bins[b].1 += (d.top == want) as usize;
        bins[b].2 += d.confidence;
    }
    let ece: f32 = bins
        .iter()
        .filter(|b| b.0 > 0)
        .map(|b| (b.0 as f32 / n as f32) * (b.1 as f32 / b.0 as f32 - b.2 / b.0 as f32).abs())
        .sum();
    println!(
        "n={n} accuracy={:.3} top1={:.3} cloud_share={:.3} ece={ece:.3} threshold={threshold}",
        ok as f32 / n as f32,
        ok_top as f32 / n as f32,
        cloud as f32 / n as f32
    );
}
