//! `vla-calib`: the install-time calibration tool (see DESIGN.md §5).

fn main() {
    eprintln!("vla-calib: not built yet");
    std::process::exit(1);
}
