# syntax=docker/dockerfile:1
# The stash-rs image: the `stash` binary (the operator), the `stash-agent` binary (what runs in
# pods: the sidecar, restores, the job model's steps) and a pinned restic. Build from the repository root:
#
#   docker build -t stash-rs/stash:0.1.0 .
#
# The versions below are checked against the repository's own pins by
# install/tests/generated.rs (restic: testenv/go/restic/go.mod; Rust: Cargo.toml rust-version).
ARG RUST_VERSION=1.95
ARG GO_VERSION=1.26
ARG RESTIC_VERSION=0.19.1

FROM rust:${RUST_VERSION}-bookworm AS stash
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p stash -p stash-agent \
 && cp target/release/stash /stash && cp target/release/stash-agent /stash-agent

# restic from the same wrapper module the tests use: its go.sum pins every dependency.
FROM golang:${GO_VERSION}-bookworm AS restic
ARG RESTIC_VERSION
ENV CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="-mod=mod -trimpath"
WORKDIR /restic
COPY testenv/go/restic/go.mod testenv/go/restic/go.sum ./
RUN grep -q "github.com/restic/restic v${RESTIC_VERSION} " go.mod \
 && go build -ldflags "-s -w" -o /restic-bin github.com/restic/restic/cmd/restic \
 && /restic-bin version | grep -q "restic ${RESTIC_VERSION}"

# The final stage. testenv/images.sh builds the same image without Docker for the test cluster
# (debootstrap + these packages); install/tests/image_recipe.rs fails when the two disagree.
# postgresql-client: pg_dump/psql for the PostgreSQL Functions (deploy/functions/postgres.yaml).
FROM debian:bookworm-slim
ARG RESTIC_VERSION
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates tzdata postgresql-client \
 && rm -rf /var/lib/apt/lists/*
COPY --from=stash /stash /usr/local/bin/stash
COPY --from=stash /stash-agent /usr/local/bin/stash-agent
COPY --from=restic /restic-bin /usr/local/bin/restic
LABEL org.opencontainers.image.title="stash-rs" \
      org.opencontainers.image.description="Kubernetes backup operator speaking the Stash API" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.stash-rs.restic.version="${RESTIC_VERSION}"
# nobody: the operator runs as it (its Deployment also sets runAsNonRoot). Every agent the
# operator creates states its own user in its securityContext (docs/identity.md).
USER 65534:65534
ENTRYPOINT ["/usr/local/bin/stash"]
