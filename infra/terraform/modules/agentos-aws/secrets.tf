# Secrets Manager holds every secret the tasks read; ECS injects them as environment variables.
# Generated here: the URLs (with the generated passwords), the JWT secret, the admin token, the
# org secrets' key-encryption key. Set by the operator after apply (values start as a
# placeholder that AGENTOS_ENV=production refuses or the provider rejects): model provider keys.

resource "random_password" "jwt" {
  length  = 64
  special = false
}

resource "random_password" "admin" {
  length  = 48
  special = false
}

resource "random_bytes" "kek" {
  length = 32
}

locals {
  generated_secrets = {
    database_url = "postgresql://${aws_db_instance.this.username}:${random_password.db.result}@${aws_db_instance.this.address}:${aws_db_instance.this.port}/agentos?sslmode=require"
    redis_url    = "rediss://:${random_password.redis.result}@${aws_elasticache_replication_group.this.primary_endpoint_address}:6379/0"
    jwt_secret   = random_password.jwt.result
    admin_token  = random_password.admin.result
    secrets_keys = jsonencode({ "1" = random_bytes.kek.base64 })
  }
  operator_secrets = ["openai_api_key", "anthropic_api_key", "sandbox_token"]
  secret_env = {
    AGENTOS_DATABASE_URL               = "database_url"
    AGENTOS_REDIS_URL                  = "redis_url"
    AGENTOS_AUTH__JWT_SECRET           = "jwt_secret"
    AGENTOS_AUTH__PLATFORM_ADMIN_TOKEN = "admin_token"
    AGENTOS_SECRETS__KEYS              = "secrets_keys"
  }
  worker_secret_env = {
    AGENTOS_MODELS__OPENAI_API_KEY    = "openai_api_key"
    AGENTOS_MODELS__ANTHROPIC_API_KEY = "anthropic_api_key"
    AGENTOS_SANDBOX__TOKEN            = "sandbox_token"
  }
}

resource "aws_secretsmanager_secret" "generated" {
  for_each                = local.generated_secrets
  name_prefix             = "${var.name}/${each.key}-"
  kms_key_id              = aws_kms_key.this.arn
  recovery_window_in_days = 7
  #checkov:skip=CKV2_AWS_57:rotation needs the database and Redis passwords changed with the secret; rotate by tainting the random_password and applying
  tags = local.tags
}

resource "aws_secretsmanager_secret_version" "generated" {
  for_each      = local.generated_secrets
  secret_id     = aws_secretsmanager_secret.generated[each.key].id
  secret_string = each.value
}

resource "aws_secretsmanager_secret" "operator" {
  for_each                = toset(local.operator_secrets)
  name_prefix             = "${var.name}/${each.key}-"
  kms_key_id              = aws_kms_key.this.arn
  recovery_window_in_days = 7
  #checkov:skip=CKV2_AWS_57:provider API keys are rotated at the provider, then put here
  tags = local.tags
}

resource "aws_secretsmanager_secret_version" "operator" {
  for_each      = toset(local.operator_secrets)
  secret_id     = aws_secretsmanager_secret.operator[each.key].id
  secret_string = "set-me" # aws secretsmanager put-secret-value replaces it; terraform leaves it alone then
  lifecycle {
    ignore_changes = [secret_string]
  }
}

locals {
  secret_arns = merge(
    { for k, s in aws_secretsmanager_secret.generated : k => s.arn },
    { for k, s in aws_secretsmanager_secret.operator : k => s.arn },
  )
}
