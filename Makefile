# One entry point for the local stack and the tests. `make help` lists the targets.
.PHONY: help install up down status test lint demo demo-down bench bench-peers chaos

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

install: ## install the stack's components if missing (Kafka and Apicurio from Maven Central, PostgreSQL, Prometheus, build deps)
	scripts/stack.sh install

up: ## install if needed, start broker, registry, PostgreSQL and Prometheus, wait until they answer
	scripts/stack.sh up

down: ## stop what `make up` started, and wait until it has exited
	scripts/stack.sh down

status: ## what answers on which port
	scripts/stack.sh status

demo: ## the whole pipeline here: stack, API stand-in (sample data) or real API, both connectors, summary
	scripts/demo.sh up

demo-down: ## stop the demo's connectors and the stack
	scripts/demo.sh down

bench: up ## throughput vs the raw PostgreSQL limit, scaling, latency, memory (BENCH_RECORDS, BENCH_BATCH, ...)
	@# Two builds: with two -p and a pkg/feature flag cargo leaves out the stand-in (required-features).
	cargo build --release -p sink-connector -p bench --bins
	cargo build --release -p source-connector --features standin --bins
	target/release/bench

bench-peers: up ## our sink against Kafka Connect + Debezium's JDBC sink on the same topic (PEERS_RECORDS, 500,000)
	scripts/peers/connect.sh install
	cargo build --release -p sink-connector -p bench --bins
	target/release/bench-peers

chaos: up ## sink SIGKILLed 50 times and PostgreSQL restarted under it; then the source SIGKILLed 50 times while it publishes; prints figures (CHAOS_CYCLES, CHAOS_SEED)
	CHAOS_CYCLES=$${CHAOS_CYCLES:-50} cargo test -p sink-connector --test chaos -- --nocapture
	cargo build -p sink-connector
	CHAOS_CYCLES=$${CHAOS_CYCLES:-50} cargo test -p source-connector --test source_chaos -- --nocapture

test: up ## bring the stack up, then run every test (unit and integration)
	cargo test --workspace --all-targets

lint: ## formatting and clippy, as CI expects
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
