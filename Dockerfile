FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY connectors connectors
COPY webhooks webhooks
COPY config config
RUN pip install --no-cache-dir .
ENV GATEWAY_HTTP_HOST=0.0.0.0 GATEWAY_SIP_HOST=0.0.0.0
EXPOSE 8080 5060/udp 5060/tcp
CMD ["gateway", "serve"]
