variable "name" {
  description = "Prefix of every resource's name (lowercase letters, digits and hyphens)."
  type        = string
  default     = "agentos"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,20}$", var.name))
    error_message = "name must be 2 to 21 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "image" {
  description = "The AgentOS container image (built from the repository's Dockerfile), e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com/agentos:1.2.0."
  type        = string

  validation {
    condition     = can(regex("^[^:@\\s]+(:[A-Za-z0-9_.-]+|@sha256:[a-f0-9]{64})$", var.image))
    error_message = "image must name a tag or a digest (repository:tag or repository@sha256:...), never an implicit latest."
  }
}

variable "vpc_id" {
  description = "The VPC to deploy into."
  type        = string

  validation {
    condition     = can(regex("^vpc-[0-9a-f]+$", var.vpc_id))
    error_message = "vpc_id must look like vpc-0123abcd."
  }
}

variable "public_subnet_ids" {
  description = "Subnets of the load balancer (at least two availability zones)."
  type        = list(string)

  validation {
    condition     = length(var.public_subnet_ids) >= 2
    error_message = "The load balancer needs subnets in at least two availability zones."
  }
}

variable "private_subnet_ids" {
  description = "Subnets of the tasks, the database and Redis (at least two availability zones, with a NAT route for model providers)."
  type        = list(string)

  validation {
    condition     = length(var.private_subnet_ids) >= 2
    error_message = "Give private subnets in at least two availability zones."
  }
}

variable "certificate_arn" {
  description = "ACM certificate of the API's HTTPS listener."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:acm:", var.certificate_arn))
    error_message = "certificate_arn must be an ACM certificate ARN."
  }
}

variable "api_count" {
  description = "API tasks (at least 2: one may be replaced during a deploy)."
  type        = number
  default     = 2

  validation {
    condition     = var.api_count >= 2 && var.api_count <= 50
    error_message = "api_count must be between 2 and 50."
  }
}

variable "worker_min" {
  description = "Fewest worker tasks."
  type        = number
  default     = 1

  validation {
    condition     = var.worker_min >= 1
    error_message = "worker_min must be at least 1 (a queued run needs a worker)."
  }
}

variable "worker_max" {
  description = "Most worker tasks the queue-depth autoscaling may start."
  type        = number
  default     = 10

  validation {
    condition     = var.worker_max >= 1 && var.worker_max <= 200
    error_message = "worker_max must be between 1 and 200."
  }
}

variable "worker_concurrency" {
  description = "Runs one worker task executes at once."
  type        = number
  default     = 2

  validation {
    condition     = var.worker_concurrency >= 1 && var.worker_concurrency <= 32
    error_message = "worker_concurrency must be between 1 and 32."
  }
}

variable "queued_runs_per_worker" {
  description = "Target of the worker autoscaling: queued runs per running worker task."
  type        = number
  default     = 4

  validation {
    condition     = var.queued_runs_per_worker > 0
    error_message = "queued_runs_per_worker must be positive."
  }
}

variable "queue_depth_metric" {
  description = "The CloudWatch metric holding the queue depth (agentos_queue_depth, published from the API's /metrics by the metrics work, issue #13)."
  type = object({
    namespace = string
    name      = string
  })
  default = {
    namespace = "AgentOS"
    name      = "agentos_queue_depth"
  }
}

variable "worker_shutdown_grace_s" {
  description = "Seconds a stopping worker lets its runs finish before it releases them (AGENTOS_WORKER__SHUTDOWN_GRACE_S); the task's stopTimeout is this plus 10."
  type        = number
  default     = 60

  validation {
    condition     = var.worker_shutdown_grace_s >= 0 && var.worker_shutdown_grace_s <= 110
    error_message = "worker_shutdown_grace_s must be 0 to 110 (ECS stops a task at most 120 s after SIGTERM)."
  }
}

variable "sse_idle_timeout_s" {
  description = "Load balancer idle timeout; above the API's SSE keep-alive (15 s) so idle streams stay open."
  type        = number
  default     = 3600

  validation {
    condition     = var.sse_idle_timeout_s >= 60 && var.sse_idle_timeout_s <= 4000
    error_message = "sse_idle_timeout_s must be 60 to 4000 (the ALB maximum)."
  }
}

variable "db_instance_class" {
  description = "RDS instance class."
  type        = string
  default     = "db.t4g.medium"

  validation {
    condition     = can(regex("^db\\.", var.db_instance_class))
    error_message = "db_instance_class must start with db."
  }
}

variable "db_engine_version" {
  description = "PostgreSQL major version (15 or later: pgvector 0.8)."
  type        = string
  default     = "17"

  validation {
    condition     = can(regex("^(1[5-9]|[2-9][0-9])(\\.[0-9]+)?$", var.db_engine_version))
    error_message = "db_engine_version must be PostgreSQL 15 or later."
  }
}

variable "db_allocated_storage_gb" {
  description = "Initial storage (autoscaling up to four times this)."
  type        = number
  default     = 50

  validation {
    condition     = var.db_allocated_storage_gb >= 20
    error_message = "db_allocated_storage_gb must be at least 20."
  }
}

variable "redis_node_type" {
  description = "ElastiCache node type."
  type        = string
  default     = "cache.t4g.small"

  validation {
    condition     = can(regex("^cache\\.", var.redis_node_type))
    error_message = "redis_node_type must start with cache."
  }
}

variable "sandbox_url" {
  description = "The sandbox service workers send code_executor's code to (run it on its own EC2 host: Fargate grants no CAP_SYS_ADMIN for bubblewrap; see README). Empty: code_executor says no sandbox is configured."
  type        = string
  default     = ""

  validation {
    condition     = var.sandbox_url == "" || can(regex("^https?://", var.sandbox_url))
    error_message = "sandbox_url must be empty or an http(s) URL."
  }
}

variable "log_retention_days" {
  description = "CloudWatch Logs retention."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a value CloudWatch Logs accepts (e.g. 30, 90, 365)."
  }
}

variable "deletion_protection" {
  description = "Protect the database and the load balancer from deletion."
  type        = bool
  default     = true
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}
