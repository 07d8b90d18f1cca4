# Images of the relay and the operator, from one build:
#   docker build --target relay    -t pgtrickle-relay:dev .
#   docker build --target operator -t pgtrickle-relay-operator:dev .
# FEATURES picks the relay's backends (default: every one).
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
ARG FEATURES="nats,webhook,stdout,kafka,redis,sqs,rabbitmq,pg-inbox"
WORKDIR /src
# librdkafka (kafka feature) is built from source by rdkafka-sys: it needs make, perl and zlib.
RUN apt-get update && apt-get install -y --no-install-recommends build-essential perl zlib1g-dev && rm -rf /var/lib/apt/lists/*
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p relay-runtime --bin pgtrickle-relay --no-default-features --features "${FEATURES}" \
 && cargo build --release --locked -p pgtrickle-relay-operator \
 && mkdir -p /out \
 && cp target/release/pgtrickle-relay target/release/pgtrickle-relay-operator /out/

# Distroless with glibc and libgcc; runs as uid 65532 (the pods' runAsUser).
FROM gcr.io/distroless/cc-debian12:nonroot AS relay
COPY --from=build /out/pgtrickle-relay /usr/local/bin/pgtrickle-relay
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/pgtrickle-relay"]
CMD ["run"]

FROM gcr.io/distroless/cc-debian12:nonroot AS operator
COPY --from=build /out/pgtrickle-relay-operator /usr/local/bin/pgtrickle-relay-operator
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/pgtrickle-relay-operator"]
