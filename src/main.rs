//! The `anonmirror` binary: everything lives in the library.

fn main() -> std::process::ExitCode {
    anonmirror::run()
}
