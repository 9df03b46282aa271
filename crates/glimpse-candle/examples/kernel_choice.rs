//! `cargo run --release -p glimpse-candle --example kernel_choice`: print the bf16 kernel this
//! process chose and why (to check the choice is the same in every process on one machine; set
//! `GLIMPSE_BF16_RACE=1` to race even where the CPU family's answer is known).

fn main() {
    let (kernel, fast) = glimpse_candle::kernel_for(glimpse_candle::Precision::Bf16);
    println!("{kernel} fast={fast}");
}
