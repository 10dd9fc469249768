fn main() {
    std::process::exit(blobvault::cli::main());
}
