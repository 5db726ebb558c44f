//! `vla-calib`: the install-time calibration tool (DESIGN.md §5).

mod rate;
mod sheet;

fn main() {
    eprintln!("vla-calib: not built yet");
    std::process::exit(1);
}
