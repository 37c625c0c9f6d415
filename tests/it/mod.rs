pub(crate) mod harness;

mod cli;
mod control;
mod crash;
mod disk_full;
mod shards;
mod smtp;
mod tls;
