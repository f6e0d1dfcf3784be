# Global Accelerator: two static anycast addresses; AWS's edge carries each client to
# the nearest healthy region's client NLB over the AWS backbone. A region's traffic
# dial (var.regions[*].traffic_dial) moves its share elsewhere gradually: the
# accelerator half of draining a region (deploy/README.md "Draining a region").
resource "aws_globalaccelerator_accelerator" "tickmesh" {
  provider = aws.accelerator

  name            = "tickmesh"
  ip_address_type = "IPV4"
  enabled         = true

  attributes {
    flow_logs_enabled   = true
    flow_logs_s3_bucket = var.log_bucket_name
    flow_logs_s3_prefix = "globalaccelerator/tickmesh/"
  }
}

resource "aws_globalaccelerator_listener" "wss" {
  provider = aws.accelerator

  accelerator_arn = aws_globalaccelerator_accelerator.tickmesh.id
  protocol        = "TCP"
  # A reconnecting client returns to the same region (its resume positions are there).
  client_affinity = "SOURCE_IP"

  port_range {
    from_port = 443
    to_port   = 443
  }
}

resource "aws_globalaccelerator_endpoint_group" "region" {
  provider = aws.accelerator
  for_each = local.routed

  listener_arn            = aws_globalaccelerator_listener.wss.id
  endpoint_group_region   = each.key
  traffic_dial_percentage = each.value.traffic_dial

  # For NLB endpoints the accelerator follows the NLB's own target health (/readyz, set
  # by the tickmesh-client Service); these settings apply to other endpoint types.
  health_check_protocol         = "HTTPS"
  health_check_port             = 443
  health_check_path             = "/readyz"
  health_check_interval_seconds = 10
  threshold_count               = 3

  endpoint_configuration {
    endpoint_id = each.value.client_nlb_arn
    weight      = 100
  }
}
