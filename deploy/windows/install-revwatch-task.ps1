<#
.SYNOPSIS
    Register revwatch as a Windows Scheduled Task that starts with the PC (or at logon)
    and is restarted when it fails.

.DESCRIPTION
    Checks the configuration with `revwatch doctor` first and stops if it reports something
    to fix. Then registers (or replaces) the task. Run from an elevated PowerShell:

        powershell -ExecutionPolicy Bypass -File install-revwatch-task.ps1 `
            -Config 'C:\revwatch\revwatch.toml'

    The task runs at below-normal priority so that the microscope software keeps the CPU.
    See deploy\windows\README.md.

.PARAMETER InstallDir
    Folder holding the virtual environment `.venv` with revwatch installed.
.PARAMETER Config
    The TOML configuration (see deploy\configs\auto-slice-and-view.toml).
.PARAMETER TaskName
    Name of the Scheduled Task.
.PARAMETER User
    Account the task runs as. Default SYSTEM: enough for local disks (D:\ASV). To read a
    network share, give a domain or local account that can read it (you are asked for its
    password) and use UNC paths (\\server\share\...) in the config: mapped drive letters do
    not exist in a task's session.
.PARAMETER AtLogon
    Start when -User logs on instead of at system startup.
.PARAMETER SkipDoctor
    Register even if `revwatch doctor` reports a failure (e.g. the folder of the next
    acquisition does not exist yet).
#>
[CmdletBinding()]
param(
    [string]$InstallDir = 'C:\revwatch',
    [string]$Config = 'C:\revwatch\revwatch.toml',
    [string]$TaskName = 'revwatch',
    [string]$User = 'SYSTEM',
    [switch]$AtLogon,
    [switch]$SkipDoctor
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

$exe = Join-Path $InstallDir '.venv\Scripts\revwatch.exe'
if (-not (Test-Path -LiteralPath $exe -PathType Leaf)) {
    throw "revwatch is not installed at ${exe}: create the venv first (see deploy\windows\README.md)"
}
if ($AtLogon -and $User -eq 'SYSTEM') {
    throw "-AtLogon needs -User: the account whose logon starts revwatch"
}
if (-not (Test-Path -LiteralPath $Config -PathType Leaf)) {
    throw "configuration $Config does not exist: copy one from deploy\configs and edit it"
}
$Config = (Resolve-Path -LiteralPath $Config).Path

& $exe doctor --config $Config
if ($LASTEXITCODE -ne 0) {
    if ($SkipDoctor) {
        Write-Warning "revwatch doctor reported problems (exit $LASTEXITCODE); registering anyway (-SkipDoctor)"
    } else {
        throw "revwatch doctor reported problems (exit $LASTEXITCODE): fix them, or pass -SkipDoctor"
    }
}

$action = New-ScheduledTaskAction -Execute $exe -Argument "run --config `"$Config`"" -WorkingDirectory $InstallDir

if ($AtLogon) {
    $trigger = New-ScheduledTaskTrigger -AtLogOn -User $User
} else {
    $trigger = New-ScheduledTaskTrigger -AtStartup
    # Let the network and the data disks come up before the folder is watched.
    $trigger.Delay = 'PT1M'
}

# No time limit; restart every minute after a failure, up to 999 times; one instance only;
# priority 7 = below normal (the microscope software comes first).
$settings = New-ScheduledTaskSettingsSet `
    -ExecutionTimeLimit ([TimeSpan]::Zero) `
    -RestartCount 999 `
    -RestartInterval (New-TimeSpan -Minutes 1) `
    -MultipleInstances IgnoreNew `
    -StartWhenAvailable `
    -AllowStartIfOnBatteries `
    -DontStopIfGoingOnBatteries `
    -Priority 7

if ($User -eq 'SYSTEM') {
    $principal = New-ScheduledTaskPrincipal -UserId 'SYSTEM' -LogonType ServiceAccount -RunLevel Limited
    Register-ScheduledTask -TaskName $TaskName -Action $action -Trigger $trigger -Settings $settings `
        -Principal $principal -Description 'revwatch FIB-SEM slice watcher' -Force | Out-Null
} elseif ($AtLogon) {
    $principal = New-ScheduledTaskPrincipal -UserId $User -LogonType Interactive -RunLevel Limited
    Register-ScheduledTask -TaskName $TaskName -Action $action -Trigger $trigger -Settings $settings `
        -Principal $principal -Description 'revwatch FIB-SEM slice watcher' -Force | Out-Null
} else {
    # Runs whether the user is logged on or not: needs the password (stored by Task Scheduler).
    $credential = Get-Credential -UserName $User -Message "Password of $User (runs revwatch at startup)"
    Register-ScheduledTask -TaskName $TaskName -Action $action -Trigger $trigger -Settings $settings `
        -User $credential.UserName -Password $credential.GetNetworkCredential().Password `
        -RunLevel Limited -Description 'revwatch FIB-SEM slice watcher' -Force | Out-Null
}

Write-Host "Registered task '$TaskName': $exe run --config `"$Config`" as $User"
Write-Host "Start it now:   Start-ScheduledTask -TaskName '$TaskName'"
Write-Host "Its state:      Get-ScheduledTaskInfo -TaskName '$TaskName'   (LastTaskResult 0 = clean exit)"
Write-Host "Remove it:      Unregister-ScheduledTask -TaskName '$TaskName' -Confirm:`$false"
