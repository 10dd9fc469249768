//! The `blobvault` command: the server, its client, store and recovery maintenance, and the load
//! generator (`blobvault --help`). All of it lives in the library's `cli` module; this only exits
//! with the status that returns.

fn main() {
    std::process::exit(blobvault::cli::main());
}
