data "aws_region" "current" {}
data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  tags = merge({ "app" = "agentos", "module" = "agentos-aws" }, var.tags)
  # Every process of AgentOS reads these; secrets come from Secrets Manager (secrets.tf).
  common_env = [
    { name = "AGENTOS_ENV", value = "production" },
    { name = "AGENTOS_WORKER__WORKSPACE_ROOT", value = "/var/lib/agentos/workspaces" },
    { name = "AGENTOS_SANDBOX__URL", value = var.sandbox_url },
  ]
}

# One key for everything this module stores: the database, Redis, secrets, logs.
resource "aws_kms_key" "this" {
  description             = "${var.name}: data at rest (RDS, ElastiCache, Secrets Manager, CloudWatch Logs, EFS)"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
  tags                    = local.tags
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.this.key_id
}

data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_111:in a key policy, resource "*" means this key and nothing else
  #checkov:skip=CKV_AWS_356:in a key policy, resource "*" means this key and nothing else
  #checkov:skip=CKV_AWS_109:the account's administrators manage the key, as in AWS's default key policy
  # The account administers the key (the default key policy) ...
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }
  # ... and CloudWatch Logs may use it for this module's log groups only.
  statement {
    sid       = "CloudWatchLogs"
    actions   = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${data.aws_region.current.name}.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${data.aws_partition.current.partition}:logs:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:log-group:/${var.name}/*"]
    }
  }
}

resource "aws_cloudwatch_log_group" "this" {
  for_each          = toset(["api", "worker", "watchdog", "migrate"])
  name              = "/${var.name}/${each.key}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
  tags              = local.tags
}
