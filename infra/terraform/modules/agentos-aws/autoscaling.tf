# Workers follow the queue: target tracking keeps about `queued_runs_per_worker` queued runs per
# running worker task, between worker_min and worker_max. The metric is the queue-depth gauge
# agentos_queue_depth (the metrics work of issue #13), published to CloudWatch (README: Metrics).
# Scale-in stops workers with SIGTERM: they finish or release their runs (stopTimeout above).

resource "aws_appautoscaling_target" "worker" {
  service_namespace  = "ecs"
  resource_id        = "service/${aws_ecs_cluster.this.name}/${aws_ecs_service.worker.name}"
  scalable_dimension = "ecs:service:DesiredCount"
  min_capacity       = var.worker_min
  max_capacity       = var.worker_max
}

resource "aws_appautoscaling_policy" "worker_queue_depth" {
  name               = "${var.name}-worker-queue-depth"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.worker.service_namespace
  resource_id        = aws_appautoscaling_target.worker.resource_id
  scalable_dimension = aws_appautoscaling_target.worker.scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value       = var.queued_runs_per_worker
    scale_out_cooldown = 30
    scale_in_cooldown  = 300

    customized_metric_specification {
      metrics {
        id          = "depth"
        label       = "queued runs"
        return_data = false
        metric_stat {
          metric {
            namespace   = var.queue_depth_metric.namespace
            metric_name = var.queue_depth_metric.name
          }
          stat = "Maximum"
        }
      }
      metrics {
        id          = "workers"
        label       = "running worker tasks"
        return_data = false
        metric_stat {
          metric {
            namespace   = "ECS/ContainerInsights"
            metric_name = "RunningTaskCount"
            dimensions {
              name  = "ClusterName"
              value = aws_ecs_cluster.this.name
            }
            dimensions {
              name  = "ServiceName"
              value = aws_ecs_service.worker.name
            }
          }
          stat = "Average"
        }
      }
      metrics {
        id          = "per_worker"
        label       = "queued runs per worker task"
        expression  = "depth / MAX([workers, 1])"
        return_data = true
      }
    }
  }
}
