# The image of every redismq role in docker-compose.yml: the library, the worker runtime,
# the `redismq` command and the registration example (web app, tasks, SMTP sink).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY redismq ./redismq
COPY workers ./workers
COPY cli ./cli
COPY examples ./examples
RUN pip install --no-cache-dir '.[example]'
# examples/ is not an installed package: it is imported from /app
ENV PYTHONPATH=/app \
    PYTHONUNBUFFERED=1
EXPOSE 8000 8025
CMD ["redismq", "--help"]
