//! Each kernel's time for one decoded row, and for a 64-row prefill batch,
//! against a 4096 × 4096 matrix of random blocks, per block type, on one
//! thread: the figure that the
//! criterion bench (the default model's Q4_1 and Q8_0 matrices) does not
//! give for the other types, and one that runs wherever the tests do:
//!
//!   cargo run --release -p arny-qmatmul --example kernel_speed
//!   scripts/test-wasm-kernels.sh --speed   # the simd128 kernels under Node (V8)

use std::time::Instant;

use arny_qmatmul::{Kernel, QMatrix, QType, matmul_with};

fn main() {
    let (rows, cols) = (4096, 4096);
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let batch = 64;
    let x: Vec<f32> = (0..batch * cols)
        .map(|_| (next() % 2001) as f32 / 1000.0 - 1.0)
        .collect();
    let mut out = vec![0f32; batch * rows];
    println!(
        "{:<6} {:<14} {:>9} {:>8} {:>12}",
        "type", "kernel", "ms/row", "GB/s", "ms/64 rows"
    );
    for ty in QType::ALL {
        let n = rows * cols / ty.block() * ty.block_bytes();
        let mut data: Vec<u8> = (0..n).map(|_| next() as u8).collect();
        // Small finite f16 scales where each format keeps them (random
        // bytes would include infinities, which a QMatrix refuses).
        let (scales, stride): (&[usize], usize) = match ty {
            QType::Q4_0 | QType::Q8_0 => (&[0], ty.block_bytes()),
            QType::Q4_1 | QType::Q4_K => (&[0, 2], ty.block_bytes()),
            QType::Q6_K => (&[208], ty.block_bytes()),
        };
        for b in data.chunks_exact_mut(stride) {
            for &i in scales {
                b[i..i + 2].copy_from_slice(&0x2000u16.to_le_bytes());
            }
        }
        let w = QMatrix::new(ty, rows, cols, data.into(), 0).expect("a matrix");
        for kernel in Kernel::available() {
            let mut time = |m: usize, reps: usize| {
                let (x, out) = (&x[..m * cols], &mut out[..m * rows]);
                matmul_with(kernel, x, m, &w, out);
                let start = Instant::now();
                for _ in 0..reps {
                    matmul_with(kernel, x, m, &w, out);
                }
                start.elapsed().as_secs_f64() / reps as f64
            };
            let (one, many) = (time(1, 20), time(batch, 2));
            println!(
                "{:<6} {:<14} {:>9.3} {:>8.2} {:>12.1}",
                ty.name(),
                kernel.name(),
                one * 1e3,
                n as f64 / one / 1e9,
                many * 1e3
            );
        }
    }
}
