use clap::Parser;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info,zenoh=error"))
        .init();
    let cli = match vla_rt::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    if let Err(e) = vla_rt::cli::dispatch(cli) {
        eprintln!("vla-rt: error: {}", e.message);
        std::process::exit(e.exit_code);
    }
}
