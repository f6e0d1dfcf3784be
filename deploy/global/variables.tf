variable "domain_name" {
  description = "Public domain of the deployment; regions are REGION.<domain>, meshes mesh.REGION.<domain>, the global name ws.<domain>, the dashboard dashboard.<domain>. Must match the URLs in deploy/overlays/*/node.toml."
  type        = string
}

variable "hosted_zone_id" {
  description = "Route 53 public hosted zone of domain_name."
  type        = string
}

variable "regions" {
  description = <<-EOT
    Every region with an applied overlay, keyed by region name. From each region's cluster:
      client_nlb_*: kubectl -n tickmesh get svc tickmesh-client  (the NLB named tickmesh-client-REGION)
      mesh_nlb_*:   kubectl -n tickmesh get svc tickmesh-mesh    (the NLB named tickmesh-mesh-REGION)
    and `aws elbv2 describe-load-balancers --names NAME` for the ARN and canonical hosted zone id.
    routed = false keeps the region's own names (and its mesh) but takes it out of the
    latency answers and the accelerator: the state of a region being added or drained.
    traffic_dial is the accelerator's share of the region's traffic, 0 to 100.
  EOT
  type = map(object({
    routed              = bool
    traffic_dial        = number
    client_nlb_arn      = string
    client_nlb_dns_name = string
    client_nlb_zone_id  = string
    mesh_nlb_dns_name   = string
    mesh_nlb_zone_id    = string
  }))

  validation {
    condition     = alltrue([for r in values(var.regions) : r.traffic_dial >= 0 && r.traffic_dial <= 100])
    error_message = "traffic_dial must be between 0 and 100."
  }
  validation {
    condition     = length([for r in values(var.regions) : r if r.routed]) >= 1
    error_message = "At least one region must be routed."
  }
}

variable "dashboard_origins" {
  description = "Regions serving the dashboard through CloudFront: the first is the primary origin, the second the failover origin."
  type        = list(string)
  default     = ["us-east-1", "eu-west-1"]

  validation {
    condition     = length(var.dashboard_origins) == 2 && var.dashboard_origins[0] != var.dashboard_origins[1]
    error_message = "dashboard_origins names exactly two different regions."
  }
}

variable "dashboard_certificate_arn" {
  description = "ACM certificate (in us-east-1) for dashboard.<domain>."
  type        = string
}

variable "log_bucket_name" {
  description = "Existing S3 bucket for CloudFront access logs and Global Accelerator flow logs (its policy must allow both services to write)."
  type        = string
}

variable "waf_log_destination_arn" {
  description = "ARN of the Kinesis Data Firehose stream, CloudWatch log group or S3 bucket (name starting aws-waf-logs-) that receives the dashboard WAF's logs."
  type        = string
}

variable "health_check_regions" {
  description = "Route 53 health checker locations (at least three)."
  type        = list(string)
  default     = ["us-east-1", "eu-west-1", "ap-southeast-1"]
}
