output "api_url" {
  description = "Where clients reach the API (point your DNS name at alb_dns_name)."
  value       = "https://${aws_lb.api.dns_name}"
}

output "alb_dns_name" {
  description = "The load balancer's DNS name, for a CNAME or alias record."
  value       = aws_lb.api.dns_name
}

output "cluster_name" {
  description = "The ECS cluster."
  value       = aws_ecs_cluster.this.name
}

output "migrate_task_definition" {
  description = "Run this task (aws ecs run-task) before each release: it applies the migrations."
  value       = aws_ecs_task_definition.this["migrate"].arn
}

output "task_network" {
  description = "The network configuration for aws ecs run-task of the migration."
  value = {
    subnets         = var.private_subnet_ids
    security_groups = [aws_security_group.tasks.id]
  }
}

output "secret_arns" {
  description = "Secrets Manager secrets by name; put the model provider keys and the sandbox token into the operator ones."
  value       = local.secret_arns
}

output "database_endpoint" {
  description = "RDS endpoint (reachable from the tasks only)."
  value       = aws_db_instance.this.address
}

output "redis_endpoint" {
  description = "ElastiCache primary endpoint (TLS, reachable from the tasks only)."
  value       = aws_elasticache_replication_group.this.primary_endpoint_address
}
