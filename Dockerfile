# dimse-tls-proxy container image on the Active LTS, pinned to its major (node:26): a rebuild picks up
# its security releases; moving to the next LTS major is a reviewed change (README, Deployment).
# Build: docker build -t dimse-tls-proxy .
# Run:   docker run --rm -p 11112:11112 -v $PWD/proxy.yaml:/etc/dimse-tls-proxy/proxy.yaml:ro \
#          -v $PWD/certs:/etc/dimse-tls-proxy/certs:ro dimse-tls-proxy
FROM node:26-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build && npm prune --omit=dev

FROM node:26-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
COPY config ./config
USER node
EXPOSE 11112
# No runtime flags: the daemon applies its own GC settings (README, Performance).
ENTRYPOINT ["node", "/app/dist/cli.js"]
CMD ["start", "--config", "/etc/dimse-tls-proxy/proxy.yaml"]
