# The processes on ECS Fargate: the API behind the load balancer, workers scaled on queue depth,
# one watchdog, and a one-off migration task run before each release (README: Upgrades).

resource "aws_ecs_cluster" "this" {
  name = var.name
  setting {
    name  = "containerInsights"
    value = "enabled"
  }
  tags = local.tags
}

locals {
  sizes = {
    api      = { cpu = 512, memory = 1024 }
    worker   = { cpu = 1024, memory = 2048 }
    watchdog = { cpu = 256, memory = 512 }
    migrate  = { cpu = 256, memory = 512 }
  }
  commands = {
    api      = ["api", "--host", "0.0.0.0"]
    worker   = ["worker", "--concurrency", tostring(var.worker_concurrency)]
    watchdog = ["watchdog"]
    migrate  = ["migrate"]
  }
  extra_env = {
    api      = []
    worker   = [{ name = "AGENTOS_WORKER__SHUTDOWN_GRACE_S", value = tostring(var.worker_shutdown_grace_s) }]
    watchdog = []
    migrate  = []
  }
  health = {
    api    = ["CMD", "agentos-healthcheck"]
    worker = ["CMD", "agentos-healthcheck"]
  }
}

resource "aws_ecs_task_definition" "this" {
  for_each                 = local.processes
  family                   = "${var.name}-${each.key}"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = local.sizes[each.key].cpu
  memory                   = local.sizes[each.key].memory
  execution_role_arn       = aws_iam_role.execution[each.key].arn
  task_role_arn            = aws_iam_role.task[each.key].arn
  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }
  volume {
    name = "tmp" # the only writable place besides the workspaces: the root filesystem is read-only
  }
  dynamic "volume" {
    for_each = each.key == "worker" ? [1] : []
    content {
      name = "workspaces"
      efs_volume_configuration {
        file_system_id     = aws_efs_file_system.workspaces.id
        transit_encryption = "ENABLED"
        authorization_config {
          access_point_id = aws_efs_access_point.workspaces.id
          iam             = "ENABLED"
        }
      }
    }
  }
  container_definitions = jsonencode([
    merge({
      name                   = each.key
      image                  = var.image
      essential              = true
      command                = local.commands[each.key]
      readonlyRootFilesystem = true
      user                   = "10001:10001"
      # SIGTERM, then this long before SIGKILL: the worker's grace to finish or release its runs.
      stopTimeout  = each.key == "worker" ? var.worker_shutdown_grace_s + 10 : 30
      environment  = concat(local.common_env, local.extra_env[each.key])
      secrets      = [for env, name in each.value.secrets : { name = env, valueFrom = local.secret_arns[name] }]
      portMappings = each.key == "api" ? [{ containerPort = 8000, protocol = "tcp" }] : []
      mountPoints = concat(
        [{ sourceVolume = "tmp", containerPath = "/tmp", readOnly = false }],
        each.key == "worker" ? [{ sourceVolume = "workspaces", containerPath = "/var/lib/agentos/workspaces", readOnly = false }] : [],
      )
      logConfiguration = {
        logDriver = "awslogs"
        options = {
          awslogs-group         = aws_cloudwatch_log_group.this[each.key].name
          awslogs-region        = data.aws_region.current.name
          awslogs-stream-prefix = each.key
        }
      }
      }, contains(keys(local.health), each.key) ? {
      healthCheck = { command = local.health[each.key], interval = 15, timeout = 5, retries = 3, startPeriod = 60 }
    } : {})
  ])
  tags = local.tags
}

resource "aws_ecs_service" "api" {
  name                               = "${var.name}-api"
  cluster                            = aws_ecs_cluster.this.id
  task_definition                    = aws_ecs_task_definition.this["api"].arn
  desired_count                      = var.api_count
  launch_type                        = "FARGATE"
  platform_version                   = "LATEST"
  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200
  health_check_grace_period_seconds  = 60
  propagate_tags                     = "SERVICE"
  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }
  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.tasks.id]
    assign_public_ip = false
  }
  load_balancer {
    target_group_arn = aws_lb_target_group.api.arn
    container_name   = "api"
    container_port   = 8000
  }
  depends_on = [aws_lb_listener.https]
  tags       = local.tags
}

resource "aws_ecs_service" "worker" {
  name                               = "${var.name}-worker"
  cluster                            = aws_ecs_cluster.this.id
  task_definition                    = aws_ecs_task_definition.this["worker"].arn
  desired_count                      = var.worker_min
  launch_type                        = "FARGATE"
  platform_version                   = "LATEST"
  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200
  propagate_tags                     = "SERVICE"
  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }
  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.tasks.id]
    assign_public_ip = false
  }
  lifecycle {
    ignore_changes = [desired_count] # the queue-depth autoscaling owns it
  }
  tags = local.tags
}

resource "aws_ecs_service" "watchdog" {
  name                               = "${var.name}-watchdog"
  cluster                            = aws_ecs_cluster.this.id
  task_definition                    = aws_ecs_task_definition.this["watchdog"].arn
  desired_count                      = 1
  launch_type                        = "FARGATE"
  platform_version                   = "LATEST"
  deployment_minimum_healthy_percent = 0 # several watchdogs only duplicate harmless sends, one is enough
  deployment_maximum_percent         = 200
  propagate_tags                     = "SERVICE"
  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.tasks.id]
    assign_public_ip = false
  }
  tags = local.tags
}
