fn main() {
    std::process::exit(git_evidence::cli::main());
}
