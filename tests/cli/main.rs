//! Integration tests: one binary (faster linking), one module per area.
//!
//! Every test runs the real `git-evidence` binary against real repositories in temp dirs, in a
//! hermetic environment (see `common`), and cross-checks with the real `git` CLI.

mod common;

mod concurrency;
mod daemon;
mod failed;
mod hooks;
mod input;
mod layout;
mod list;
mod proxmox_api;
mod push;
mod pve_packer;
mod pve_sim;
mod redaction;
mod review;
mod run;
mod verify;
mod worktrees;
