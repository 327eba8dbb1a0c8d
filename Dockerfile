# dimse-tls-proxy container image on the Active LTS, pinned to an exact release of its major (Node 26):
# bump NODE_VERSION for each Node security release (both stages use it); moving to the next LTS major is a
# reviewed change (README, Deployment).
# Build: docker build -t dimse-tls-proxy .
# Run:   docker run --rm --init --read-only -p 11112:11112 \
#          -v $PWD/proxy.yaml:/etc/dimse-tls-proxy/proxy.yaml:ro -v $PWD/certs:/etc/dimse-tls-proxy/certs:ro \
#          -v dimse-state:/var/lib/dimse-tls-proxy dimse-tls-proxy
# Writable paths: /var/lib/dimse-tls-proxy (ledger, audit spool: point ledger.path and
# audit.syslog.spoolDir under it) and /tmp; everything else may be read-only (--read-only).
ARG NODE_VERSION=26.12.1

FROM node:${NODE_VERSION}-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build && npm prune --omit=dev

FROM node:${NODE_VERSION}-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
COPY config ./config
RUN mkdir -p /var/lib/dimse-tls-proxy /etc/dimse-tls-proxy && chown node:node /var/lib/dimse-tls-proxy \
  && chmod 0700 /var/lib/dimse-tls-proxy
VOLUME ["/var/lib/dimse-tls-proxy"]
USER node
# The forward listener, the return listener, the admin endpoint (metrics, /healthz, /readyz): their
# defaults. The admin endpoint binds 127.0.0.1 unless the policy sets admin.host: 0.0.0.0 — the one
# setting that opts in to scraping from outside the container (README, Deployment).
EXPOSE 11112 11113 9464
# Liveness from the admin endpoint (/healthz), read from the policy's admin address.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["node", "/app/dist/cli.js", "status", "--live", "-c", "/etc/dimse-tls-proxy/proxy.yaml"]
# SIGTERM drains (limits.drainTimeout, default 30s): give `docker stop` more, e.g. --time 45.
STOPSIGNAL SIGTERM
# No runtime flags: the daemon applies its own GC settings (README, Performance).
ENTRYPOINT ["node", "/app/dist/cli.js"]
CMD ["start", "--config", "/etc/dimse-tls-proxy/proxy.yaml"]
