# reconcile-audit as a container: the wheel (with its notebook, templates and SQL) on Python slim,
# run as a non-root user. `reconcile-audit` is the entrypoint, so the container takes the same
# commands as the CLI: `run`, `summary --json`, `migrate`, `demo`.
#
#   docker build -t reconcile-audit .
#   docker run --rm -e DATABASE_URL=... -e SOROBAN_RPC_URL=... -v audit-reports:/reports reconcile-audit run
#
# Runs are written to /reports (RECONCILE_OUTPUT_DIR); mount a volume there to keep them.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY reconcile_audit ./reconcile_audit
COPY notebooks ./notebooks
COPY templates ./templates
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RECONCILE_OUTPUT_DIR=/reports
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    # The Jupyter kernel the runner executes the notebook with, registered once at build time.
    && python -m ipykernel install --prefix /usr/local --name reconcile-audit --display-name "Python (reconcile-audit)" \
    && useradd --create-home --uid 10001 audit \
    && mkdir /reports && chown audit /reports
USER audit
WORKDIR /home/audit
VOLUME ["/reports"]
ENTRYPOINT ["reconcile-audit"]
CMD ["--help"]
