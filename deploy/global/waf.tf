# WAF in front of the dashboard's CloudFront distribution (scope CLOUDFRONT: us-east-1).
resource "aws_wafv2_web_acl" "dashboard" {
  name        = "tickmesh-dashboard"
  description = "tickmesh dashboard: AWS managed rules and a per-address rate limit"
  scope       = "CLOUDFRONT"

  default_action {
    allow {}
  }

  rule {
    name     = "aws-common"
    priority = 1
    override_action {
      none {}
    }
    statement {
      managed_rule_group_statement {
        name        = "AWSManagedRulesCommonRuleSet"
        vendor_name = "AWS"
      }
    }
    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "tickmesh-dashboard-common"
      sampled_requests_enabled   = true
    }
  }

  rule {
    name     = "aws-known-bad-inputs"
    priority = 2
    override_action {
      none {}
    }
    statement {
      managed_rule_group_statement {
        name        = "AWSManagedRulesKnownBadInputsRuleSet"
        vendor_name = "AWS"
      }
    }
    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "tickmesh-dashboard-bad-inputs"
      sampled_requests_enabled   = true
    }
  }

  # Anonymising services (Tor, open proxies) are blocked; hosting providers only counted:
  # analysts legitimately open the dashboard from cloud desktops.
  rule {
    name     = "aws-anonymous-ip"
    priority = 3
    override_action {
      none {}
    }
    statement {
      managed_rule_group_statement {
        name        = "AWSManagedRulesAnonymousIpList"
        vendor_name = "AWS"
        rule_action_override {
          name = "HostingProviderIPList"
          action_to_use {
            count {}
          }
        }
      }
    }
    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "tickmesh-dashboard-anonymous-ip"
      sampled_requests_enabled   = true
    }
  }

  # The page is one small document and one WebSocket: 600 requests in 5 minutes from
  # one address is already a reload loop or a scraper.
  rule {
    name     = "rate-limit"
    priority = 4
    action {
      block {}
    }
    statement {
      rate_based_statement {
        limit              = 600
        aggregate_key_type = "IP"
      }
    }
    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "tickmesh-dashboard-rate-limit"
      sampled_requests_enabled   = true
    }
  }

  visibility_config {
    cloudwatch_metrics_enabled = true
    metric_name                = "tickmesh-dashboard"
    sampled_requests_enabled   = true
  }
}

resource "aws_wafv2_web_acl_logging_configuration" "dashboard" {
  resource_arn            = aws_wafv2_web_acl.dashboard.arn
  log_destination_configs = [var.waf_log_destination_arn]

  # The dashboard passes the client token in the query string (?token=JWT).
  redacted_fields {
    query_string {}
  }
}
