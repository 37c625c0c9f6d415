pub(crate) mod harness;

mod acme;
mod admission;
mod api;
mod api_timeouts;
mod auth;
mod dkim_tools;
mod dns;
mod dns_relay;

mod cli;
mod control;
mod crash;
mod dead_letters;
mod disk_full;
mod fuzz_corpus;
mod inbound;
mod reload;
mod shards;
mod smtp;
mod spool_damage;
mod tls;
mod validation;
mod webhook;
mod webhook_backlog;
mod webhook_classes;
mod webhook_receiver;
